"""The model host's options: flags, then KILN_* environment variables, then defaults."""

from __future__ import annotations

import pytest

from kiln_modelhost import config


def test_parse_args_flags_env_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP", "GRPC", "METRICS"):
        monkeypatch.delenv(f"KILN_TRITON_{name}_PORT", raising=False)
    monkeypatch.delenv("KILN_SANDBOX_DELAY_MS", raising=False)
    defaults = config.parse_args([])
    assert (defaults.http_port, defaults.grpc_port, defaults.metrics_port) == (8000, 8001, 8002)
    assert defaults.sandbox_delay_ms == 10_000

    monkeypatch.setenv("KILN_TRITON_HTTP_PORT", "9000")
    monkeypatch.setenv("KILN_TRITON_GRPC_PORT", "9001")
    monkeypatch.setenv("KILN_TRITON_METRICS_PORT", "9002")
    monkeypatch.setenv("KILN_SANDBOX_DELAY_MS", "250")
    from_env = config.parse_args([])
    assert (from_env.http_port, from_env.grpc_port, from_env.metrics_port) == (9000, 9001, 9002)
    assert from_env.sandbox_delay_ms == 250

    flags = config.parse_args(["--grpc-port", "7001", "--sandbox-delay-ms", "0"])
    assert (flags.http_port, flags.grpc_port, flags.sandbox_delay_ms) == (9000, 7001, 0)


def test_parse_args_rejects_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit):
        config.parse_args(["--http-port", "70000"])
    monkeypatch.setenv("KILN_SANDBOX_DELAY_MS", "soon")
    with pytest.raises(SystemExit):
        config.parse_args([])
