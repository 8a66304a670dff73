"""The model host without Triton: request parsing, batch packing, options."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from kiln_modelhost import server as triton_server
from kiln_modelhost.reference_models.errors import (
    ModelInputError,
    ModelRuntimeError,
    SandboxFailedError,
)


def _batch(*requests: Any) -> np.ndarray[Any, np.dtype[np.object_]]:
    column = np.empty((len(requests), 1), dtype=np.object_)
    for index, request in enumerate(requests):
        column[index, 0] = request if isinstance(request, bytes) else json.dumps(request).encode()
    return column


@pytest.mark.parametrize("raw", [b"", b"not json", b"\xff\xfe", b"[1, 2]", b'"text"', b"null", 12])
def test_decode_request_rejects_non_objects(raw: Any) -> None:
    with pytest.raises(ModelInputError):
        triton_server.decode_request(raw)


def test_decode_request_accepts_numpy_bytes() -> None:
    assert triton_server.decode_request(np.bytes_(b'{"a": 1}')) == {"a": 1}


def test_parse_sandbox_request_defaults() -> None:
    parsed = triton_server.parse_sandbox_request({"kind": "audio", "delay_ms": None}, 1234)
    assert parsed == triton_server.SandboxRequest("audio", 1234, "completed")
    parsed = triton_server.parse_sandbox_request(
        {"kind": "image", "delay_ms": 5, "outcome": "failed"}, 1234
    )
    assert parsed == triton_server.SandboxRequest("image", 5, "failed")


@pytest.mark.parametrize(
    "request_",
    [
        {},
        {"kind": "text"},
        {"kind": "image", "delay_ms": -1},
        {"kind": "image", "delay_ms": 1.5},
        {"kind": "image", "delay_ms": True},
        {"kind": "image", "delay_ms": 600_001},
        {"kind": "image", "outcome": "timeout"},
        {"kind": "image", "extra": 1},
    ],
)
def test_parse_sandbox_request_rejects(request_: dict[str, Any]) -> None:
    with pytest.raises(ModelInputError):
        triton_server.parse_sandbox_request(request_, 0)


def test_sandbox_failed_outcome() -> None:
    with pytest.raises(SandboxFailedError) as caught:
        triton_server.sandbox_result(triton_server.SandboxRequest("image", 0, "failed"))
    assert str(caught.value).startswith("SANDBOX_FAILED")


def test_run_batch_answers_each_request() -> None:
    outputs = triton_server.run_batch(
        "image_procedural",
        _batch({"prompt": "one", "width": 64, "height": 64}, {"prompt": ""}, b"{bad"),
        triton_server.handle_image,
    )
    assert outputs["output"].shape == (3, 1)
    assert outputs["output"][0, 0].startswith(b"\x89PNG")
    assert outputs["content_type"][0, 0] == b"image/png"
    assert outputs["error"][0, 0] == b""
    for index in (1, 2):
        assert outputs["output"][index, 0] == b""
        assert json.loads(outputs["error"][index, 0])["code"] == "INVALID_INPUT"


def test_a_batch_that_fails_alike_raises() -> None:
    with pytest.raises(ModelInputError, match="prompt is required"):
        triton_server.run_batch(
            "image_procedural", _batch({"seed": 1}, {"seed": 2}), triton_server.handle_image
        )


def test_unexpected_errors_become_model_errors() -> None:
    def broken(_request: dict[str, Any]) -> tuple[bytes, str]:
        raise ZeroDivisionError("secret internal detail")

    with pytest.raises(ModelRuntimeError) as caught:
        triton_server.run_batch("x", _batch({}), broken)
    assert "secret" not in str(caught.value)


def test_sandbox_batch_waits_once_for_the_longest_delay() -> None:
    import time

    started = time.perf_counter()
    outputs = triton_server.run_sandbox_batch(
        _batch(
            {"kind": "audio", "delay_ms": 100},
            {"kind": "image", "delay_ms": 200, "outcome": "failed"},
            {"kind": "image", "delay_ms": None},
        ),
        default_delay_ms=50,
    )
    elapsed = time.perf_counter() - started
    assert 0.2 <= elapsed < 0.6
    assert outputs["content_type"][0, 0] == b"audio/wav"
    assert json.loads(outputs["error"][1, 0])["code"] == "SANDBOX_FAILED"
    assert outputs["content_type"][2, 0] == b"image/png"


def test_pack_results_keeps_trailing_zero_bytes() -> None:
    packed = triton_server.pack_results([(b"RIFF\x00\x00", "audio/wav")])
    assert packed["output"][0, 0] == b"RIFF\x00\x00"


def test_parse_args_flags_env_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP", "GRPC", "METRICS"):
        monkeypatch.delenv(f"KILN_TRITON_{name}_PORT", raising=False)
    monkeypatch.delenv("KILN_SANDBOX_DELAY_MS", raising=False)
    defaults = triton_server.parse_args([])
    assert (defaults.http_port, defaults.grpc_port, defaults.metrics_port) == (8000, 8001, 8002)
    assert defaults.sandbox_delay_ms == 10_000

    monkeypatch.setenv("KILN_TRITON_HTTP_PORT", "9000")
    monkeypatch.setenv("KILN_TRITON_GRPC_PORT", "9001")
    monkeypatch.setenv("KILN_TRITON_METRICS_PORT", "9002")
    monkeypatch.setenv("KILN_SANDBOX_DELAY_MS", "250")
    from_env = triton_server.parse_args([])
    assert (from_env.http_port, from_env.grpc_port, from_env.metrics_port) == (9000, 9001, 9002)
    assert from_env.sandbox_delay_ms == 250

    flags = triton_server.parse_args(["--grpc-port", "7001", "--sandbox-delay-ms", "0"])
    assert (flags.http_port, flags.grpc_port, flags.sandbox_delay_ms) == (9000, 7001, 0)


def test_parse_args_rejects_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit):
        triton_server.parse_args(["--http-port", "70000"])
    monkeypatch.setenv("KILN_SANDBOX_DELAY_MS", "soon")
    with pytest.raises(SystemExit):
        triton_server.parse_args([])
