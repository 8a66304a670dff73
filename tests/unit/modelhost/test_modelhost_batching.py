"""Batches without Triton: each request answered on its own, errors kept per request."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from kiln_modelhost import batching, handlers
from kiln_modelhost.reference_models.errors import ModelInputError, ModelRuntimeError


def _batch(*requests: Any) -> np.ndarray[Any, np.dtype[np.object_]]:
    column = np.empty((len(requests), 1), dtype=np.object_)
    for index, request in enumerate(requests):
        column[index, 0] = request if isinstance(request, bytes) else json.dumps(request).encode()
    return column


def test_run_batch_answers_each_request() -> None:
    outputs = batching.run_batch(
        "image_procedural",
        _batch({"prompt": "one", "width": 64, "height": 64}, {"prompt": ""}, b"{bad"),
        handlers.handle_image,
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
        batching.run_batch(
            "image_procedural", _batch({"seed": 1}, {"seed": 2}), handlers.handle_image
        )


def test_unexpected_errors_become_model_errors() -> None:
    def broken(_request: dict[str, Any]) -> tuple[bytes, str]:
        raise ZeroDivisionError("secret internal detail")

    with pytest.raises(ModelRuntimeError) as caught:
        batching.run_batch("x", _batch({}), broken)
    assert "secret" not in str(caught.value)


def test_sandbox_batch_waits_once_for_the_longest_delay() -> None:
    # the waits are recorded, not timed: how long a sleep takes depends on the machine's load
    waits: list[float] = []
    outputs = batching.run_sandbox_batch(
        _batch(
            {"kind": "audio", "delay_ms": 100},
            {"kind": "image", "delay_ms": 200, "outcome": "failed"},
            {"kind": "image", "delay_ms": None},
        ),
        default_delay_ms=50,
        sleep=waits.append,
    )
    assert waits == [0.2]
    assert outputs["content_type"][0, 0] == b"audio/wav"
    assert json.loads(outputs["error"][1, 0])["code"] == "SANDBOX_FAILED"
    assert outputs["content_type"][2, 0] == b"image/png"


def test_a_sandbox_batch_of_invalid_requests_does_not_wait() -> None:
    waits: list[float] = []
    with pytest.raises(ModelInputError):
        batching.run_sandbox_batch(
            _batch({"kind": "text", "delay_ms": 500}), default_delay_ms=50, sleep=waits.append
        )
    assert waits == []


def test_pack_results_keeps_trailing_zero_bytes() -> None:
    packed = batching.pack_results([(b"RIFF\x00\x00", "audio/wav")])
    assert packed["output"][0, 0] == b"RIFF\x00\x00"
