"""The worker's Triton client without a server: error mapping, request encoding, and the
tensor contract it shares with the model host (kiln_modelhost)."""

from __future__ import annotations

import pytest
from tritonclient.utils import InferenceServerException

from kiln_inference import triton_client
from kiln_inference.triton_client import TritonInferenceError
from kiln_modelhost import contract
from kiln_modelhost.reference_models.errors import (
    ModelError,
    ModelInputError,
    ModelRuntimeError,
    SandboxFailedError,
)
from tests.stack_support import free_port


def _server_error(message: str, status: str) -> InferenceServerException:
    return InferenceServerException(msg=message, status=status)


TRACEBACK = (
    "Failed to process the request(s) for model 'sandbox_0_1', message: TritonModelException: "
    'Model execute error: Traceback (most recent call last):\n  File "/x/model.py", line 1\n'
    "kiln_modelhost.reference_models.errors.SandboxFailedError: SANDBOX_FAILED: the sandbox "
    "job failed as requested (outcome: failed)\n"
)


@pytest.mark.parametrize(
    ("message", "status", "code", "retryable"),
    [
        (TRACEBACK, "StatusCode.INTERNAL", "SANDBOX_FAILED", False),
        (
            "...ModelInputError: INVALID_INPUT: prompt is required\n",
            "StatusCode.INTERNAL",
            "INVALID_INPUT",
            False,
        ),
        (
            "...ModelRuntimeError: MODEL_ERROR: espeak-ng took longer than 60 s\n",
            "StatusCode.INTERNAL",
            "MODEL_ERROR",
            True,
        ),
        (
            "failed to connect to all addresses",
            "StatusCode.UNAVAILABLE",
            "TRITON_UNAVAILABLE",
            True,
        ),
        ("Deadline Exceeded", "StatusCode.DEADLINE_EXCEEDED", "TRITON_TIMEOUT", True),
        (
            "Request for unknown model: 'nope' is not found",
            "StatusCode.NOT_FOUND",
            "MODEL_UNAVAILABLE",
            True,
        ),
        ("something odd", "StatusCode.INTERNAL", "MODEL_ERROR", True),
    ],
)
def test_server_errors_map_to_codes(message: str, status: str, code: str, retryable: bool) -> None:
    error = triton_client._map_server_error(_server_error(message, status), "m")
    assert (error.code, error.retryable) == (code, retryable)
    assert "Traceback" not in error.message
    assert "/x/" not in error.message


def test_sandbox_message_is_clean() -> None:
    error = triton_client._map_server_error(_server_error(TRACEBACK, "StatusCode.INTERNAL"), "m")
    assert error.message == "the sandbox job failed as requested (outcome: failed)"
    assert str(error).startswith("SANDBOX_FAILED: ")


def test_unserializable_request_is_invalid_input() -> None:
    with pytest.raises(TritonInferenceError) as caught:
        triton_client.encode_request({"x": object()})
    assert (caught.value.code, caught.value.retryable) == ("INVALID_INPUT", False)
    with pytest.raises(TritonInferenceError):
        triton_client.encode_request({"x": float("nan")})


def test_error_codes_agree_between_client_and_models() -> None:
    errors: list[type[ModelError]] = [ModelInputError, ModelRuntimeError, SandboxFailedError]
    for error in errors:
        assert triton_client.RETRYABLE[error.code] == error.retryable
    assert triton_client.REQUEST_INPUT == contract.REQUEST_INPUT
    assert triton_client.OUTPUT == contract.OUTPUT
    assert triton_client.CONTENT_TYPE_OUTPUT == contract.CONTENT_TYPE_OUTPUT
    assert triton_client.ERROR_OUTPUT == contract.ERROR_OUTPUT


def test_error_repr_and_defaults() -> None:
    error = TritonInferenceError("TRITON_UNAVAILABLE", "down")
    assert error.retryable
    assert "TRITON_UNAVAILABLE" in repr(error)
    assert not TritonInferenceError("X", "y", retryable=False).retryable


async def test_unreachable_server_is_retryable() -> None:
    url = f"127.0.0.1:{free_port()}"
    try:
        assert not await triton_client.triton_ready(url, timeout_s=1.0)
        with pytest.raises(TritonInferenceError) as caught:
            await triton_client.infer_file(url, "sandbox", {"kind": "image"}, timeout_s=2.0)
        assert (caught.value.code, caught.value.retryable) == ("TRITON_UNAVAILABLE", True)
    finally:
        await triton_client.close_clients(url)


def test_a_lost_triton_is_tried_again_at_least_every_second() -> None:
    args = dict(triton_client._channel_args())
    assert args["grpc.max_reconnect_backoff_ms"] <= 1000
    # tritonclient's own limits are kept
    assert args["grpc.max_receive_message_length"] == 2**31 - 1
