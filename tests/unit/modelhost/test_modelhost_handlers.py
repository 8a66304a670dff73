"""The model handlers without Triton: request decoding and the sandbox's request rules."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from kiln_modelhost import handlers
from kiln_modelhost.reference_models.errors import ModelInputError, SandboxFailedError


@pytest.mark.parametrize("raw", [b"", b"not json", b"\xff\xfe", b"[1, 2]", b'"text"', b"null", 12])
def test_decode_request_rejects_non_objects(raw: Any) -> None:
    with pytest.raises(ModelInputError):
        handlers.decode_request(raw)


def test_decode_request_accepts_numpy_bytes() -> None:
    assert handlers.decode_request(np.bytes_(b'{"a": 1}')) == {"a": 1}


def test_parse_sandbox_request_defaults() -> None:
    parsed = handlers.parse_sandbox_request({"kind": "audio", "delay_ms": None}, 1234)
    assert parsed == handlers.SandboxRequest("audio", 1234, "completed")
    parsed = handlers.parse_sandbox_request(
        {"kind": "image", "delay_ms": 5, "outcome": "failed"}, 1234
    )
    assert parsed == handlers.SandboxRequest("image", 5, "failed")


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
        handlers.parse_sandbox_request(request_, 0)


def test_sandbox_failed_outcome() -> None:
    with pytest.raises(SandboxFailedError) as caught:
        handlers.sandbox_result(handlers.SandboxRequest("image", 0, "failed"))
    assert str(caught.value).startswith("SANDBOX_FAILED")
