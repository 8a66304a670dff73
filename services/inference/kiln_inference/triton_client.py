"""Calls to Kiln's Triton models over gRPC (``tritonclient.grpc.aio``).

Every model takes one BYTES input ``request`` (the job input as UTF-8 JSON) and answers with
``output`` (the file), ``content_type`` and ``error`` (see kiln_modelhost.contract).
Failures become TritonInferenceError with a machine-readable ``code`` and ``retryable``:

| code               | retryable | when                                                        |
|--------------------|-----------|-------------------------------------------------------------|
| TRITON_UNAVAILABLE | yes       | no connection to Triton (down, restarting, wrong address)   |
| TRITON_TIMEOUT     | yes       | no answer within ``timeout_s``                              |
| MODEL_UNAVAILABLE  | yes       | Triton is up but the model is unknown or not loaded (yet)   |
| MODEL_ERROR        | yes       | the model failed on a valid request (crash, tool timeout)   |
| INVALID_INPUT      | no        | the request can never succeed (bad or out-of-range input)   |
| SANDBOX_FAILED     | no        | a sandbox job asked for ``outcome: "failed"``               |

``message`` never carries a traceback or a server path; it is fit to show to the job's owner.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable, Sequence
from typing import Any, Final

import numpy as np
import tritonclient.grpc.aio as grpcclient
from numpy.typing import NDArray
from tritonclient.utils import InferenceServerException

# tritonclient's own bound (its channels accept messages of any size up to 2 GiB)
MAX_GRPC_MESSAGE_SIZE: Final = 2**31 - 1

LOGGER = logging.getLogger(__name__)

REQUEST_INPUT: Final = "request"
OUTPUT: Final = "output"
CONTENT_TYPE_OUTPUT: Final = "content_type"
ERROR_OUTPUT: Final = "error"

TRITON_UNAVAILABLE: Final = "TRITON_UNAVAILABLE"
TRITON_TIMEOUT: Final = "TRITON_TIMEOUT"
MODEL_UNAVAILABLE: Final = "MODEL_UNAVAILABLE"
MODEL_ERROR: Final = "MODEL_ERROR"
INVALID_INPUT: Final = "INVALID_INPUT"
SANDBOX_FAILED: Final = "SANDBOX_FAILED"

RETRYABLE: Final[dict[str, bool]] = {
    TRITON_UNAVAILABLE: True,
    TRITON_TIMEOUT: True,
    MODEL_UNAVAILABLE: True,
    MODEL_ERROR: True,
    INVALID_INPUT: False,
    SANDBOX_FAILED: False,
}
# The model's own errors travel as "CODE: message" inside Triton's error text.
_MODEL_ERROR_RE: Final = re.compile(r"\b(INVALID_INPUT|SANDBOX_FAILED|MODEL_ERROR): ([^\n]*)")
_MODEL_MISSING_RE: Final = re.compile(
    r"unknown model|is not found|not ready|no available versions|is not loaded|unavailable model",
    re.IGNORECASE,
)
# Extra time past the gRPC deadline before the local guard gives up on a hung call.
GUARD_GRACE_S: Final = 2.0


class TritonInferenceError(Exception):
    """An inference call failed; ``code`` says why and ``retryable`` whether to try again."""

    def __init__(self, code: str, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = RETRYABLE.get(code, True) if retryable is None else retryable

    def __repr__(self) -> str:
        return (
            f"TritonInferenceError(code={self.code!r}, message={self.message!r}, "
            f"retryable={self.retryable!r})"
        )


# --- client cache ------------------------------------------------------------------------------

# One client (one gRPC channel) per URL and event loop: a grpc.aio channel belongs to the loop
# it was made in.
_clients: dict[str, tuple[asyncio.AbstractEventLoop, grpcclient.InferenceServerClient]] = {}


def _channel_args() -> list[tuple[str, int]]:
    """tritonclient's own channel settings, with reconnection tried at least every second.

    gRPC waits longer and longer between attempts to reconnect a channel (up to two minutes by
    default): after Triton restarted, or when the worker started before Triton listened, the
    worker could wait out such a pause with Triton already back."""
    keepalive = grpcclient.KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]


def _client(url: str) -> grpcclient.InferenceServerClient:
    loop = asyncio.get_running_loop()
    cached = _clients.get(url)
    if cached is not None and cached[0] is loop:
        return cached[1]
    # A client made in another (now finished) loop cannot be closed from this one: drop it.
    client = grpcclient.InferenceServerClient(url=url, channel_args=_channel_args())
    _clients[url] = (loop, client)
    return client


async def close_clients(url: str | None = None) -> None:
    """Close the cached client of ``url`` (default: all of them) made in the running event loop.

    Clients made in other event loops cannot be closed from this one and are forgotten.
    """
    loop = asyncio.get_running_loop()
    urls = [url] if url is not None else list(_clients)
    for key in urls:
        cached = _clients.pop(key, None)
        if cached is None or cached[0] is not loop:
            continue
        try:
            await cached[1].close()
        except Exception:  # closing is best effort
            LOGGER.debug("closing the Triton client for %s failed", key, exc_info=True)


# --- calls -------------------------------------------------------------------------------------


def encode_request(request: dict[str, Any]) -> bytes:
    """The job input as the ``request`` tensor's UTF-8 JSON."""
    try:
        payload = json.dumps(request, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TritonInferenceError(INVALID_INPUT, "the request is not JSON-serializable") from exc
    return payload.encode("utf-8")


def _map_server_error(exc: InferenceServerException, triton_model: str) -> TritonInferenceError:
    status = str(exc.status() or "")
    text = str(exc.message() or "")
    found = _MODEL_ERROR_RE.findall(text)
    if found:
        code, message = found[-1]
        return TritonInferenceError(code, message.strip())
    if "DEADLINE_EXCEEDED" in status:
        return TritonInferenceError(TRITON_TIMEOUT, "Triton did not answer in time")
    if "CANCELLED" in status:
        return TritonInferenceError(TRITON_UNAVAILABLE, "the call to Triton was cancelled")
    if _MODEL_MISSING_RE.search(text):
        return TritonInferenceError(MODEL_UNAVAILABLE, f"model {triton_model!r} is not available")
    if "UNAVAILABLE" in status or ("UNKNOWN" in status and "connect" in text.lower()):
        return TritonInferenceError(TRITON_UNAVAILABLE, "Triton is not reachable")
    if "INVALID_ARGUMENT" in status:
        LOGGER.warning("Triton rejected a %s request: %s", triton_model, text[:500])
        return TritonInferenceError(INVALID_INPUT, "Triton rejected the request")
    LOGGER.warning("Triton error from %s (%s): %s", triton_model, status, text[:2000])
    return TritonInferenceError(MODEL_ERROR, "the model failed")


def _row(array: NDArray[Any] | None, row: int, rows: int) -> bytes | None:
    if array is None or array.size != rows:
        return None
    value = array.reshape(-1)[row]
    if isinstance(value, np.bytes_):
        return bytes(value)
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return None


def parse_rows(
    result: grpcclient.InferResult, triton_model: str, rows: int
) -> list[tuple[bytes, str] | TritonInferenceError]:
    """Each row's (file, content type), or the error the model gave that row."""
    errors = result.as_numpy(ERROR_OUTPUT)
    outputs = result.as_numpy(OUTPUT)
    content_types = result.as_numpy(CONTENT_TYPE_OUTPUT)
    parsed: list[tuple[bytes, str] | TritonInferenceError] = []
    for row in range(rows):
        error = _row(errors, row, rows)
        if error:
            try:
                decoded = json.loads(error.decode("utf-8"))
                code, message = str(decoded["code"]), str(decoded["message"])
            except (ValueError, KeyError, TypeError):
                code, message = MODEL_ERROR, "the model failed"
            parsed.append(TritonInferenceError(code, message))
            continue
        data = _row(outputs, row, rows)
        content_type = _row(content_types, row, rows)
        if data is None or not content_type:
            parsed.append(
                TritonInferenceError(MODEL_ERROR, f"model {triton_model!r} returned no file")
            )
            continue
        parsed.append((data, content_type.decode("ascii", "replace")))
    return parsed


async def _infer(
    url: str,
    triton_model: str,
    timeout_s: float,
    map_error: Callable[[InferenceServerException, str], TritonInferenceError],
    **request: Any,
) -> grpcclient.InferResult:
    """One call to Triton, its failures as TritonInferenceError (`map_error` reads the
    server's own errors)."""
    client = _client(url)
    try:
        async with asyncio.timeout(timeout_s + GUARD_GRACE_S):
            result: grpcclient.InferResult = await client.infer(
                model_name=triton_model, client_timeout=timeout_s, **request
            )
    except InferenceServerException as exc:
        raise map_error(exc, triton_model) from None
    except TimeoutError:
        raise TritonInferenceError(TRITON_TIMEOUT, "Triton did not answer in time") from None
    except (OSError, ConnectionError) as exc:
        raise TritonInferenceError(TRITON_UNAVAILABLE, "Triton is not reachable") from exc
    return result


async def infer_rows(
    url: str, triton_model: str, payloads: Sequence[bytes], timeout_s: float
) -> list[tuple[bytes, str] | TritonInferenceError]:
    """One Triton request whose rows are ``payloads`` (encoded job inputs); each row's answer.

    A failure of the whole request (Triton away, a timeout, every row failing alike) raises
    TritonInferenceError; a row the model failed alone gets its error in the list.
    """
    if timeout_s <= 0:
        raise ValueError("timeout_s must be positive")
    data: NDArray[np.object_] = np.empty((len(payloads), 1), dtype=np.object_)
    for row, payload in enumerate(payloads):
        data[row, 0] = payload
    infer_input = grpcclient.InferInput(REQUEST_INPUT, list(data.shape), "BYTES")
    infer_input.set_data_from_numpy(data)
    outputs = [
        grpcclient.InferRequestedOutput(name)
        for name in (OUTPUT, CONTENT_TYPE_OUTPUT, ERROR_OUTPUT)
    ]
    result = await _infer(
        url,
        triton_model,
        timeout_s,
        _map_server_error,
        inputs=[infer_input],
        outputs=outputs,
    )
    return parse_rows(result, triton_model, len(payloads))


async def infer_file(
    url: str, triton_model: str, request: dict[str, Any], timeout_s: float
) -> tuple[bytes, str]:
    """Run ``triton_model`` on ``request`` and return (file bytes, content type).

    ``url`` is Triton's gRPC address ("127.0.0.1:8001"). Raises TritonInferenceError.
    Cancelling the calling task cancels the gRPC call.
    """
    (answer,) = await infer_rows(url, triton_model, [encode_request(request)], timeout_s)
    if isinstance(answer, TritonInferenceError):
        raise answer
    return answer


async def triton_ready(url: str, models: Sequence[str] = (), timeout_s: float = 2.0) -> bool:
    """Whether the Triton server at ``url`` (gRPC) is live and ready, and so is each of ``models``.

    PyTriton starts Triton with no model and loads them one by one afterwards, so the server
    reports ready before its models are: pass the models you need.
    """
    client = _client(url)
    try:
        async with asyncio.timeout(timeout_s + GUARD_GRACE_S):
            if not await client.is_server_live(client_timeout=timeout_s):
                return False
            if not await client.is_server_ready(client_timeout=timeout_s):
                return False
            for model in models:
                if not await client.is_model_ready(model, client_timeout=timeout_s):
                    return False
    except (InferenceServerException, TimeoutError, OSError):
        return False
    return True


async def infer_tensors(
    url: str,
    triton_model: str,
    model_version: str,
    inputs: Sequence[tuple[str, str, NDArray[Any]]],
    output: str,
    timeout_s: float,
) -> NDArray[Any] | None:
    """Run an operator's model: ``inputs`` are (tensor, Triton datatype, array); the answer is
    the ``output`` tensor (None when the model did not return it). Raises TritonInferenceError
    with the same codes as ``infer_file``; the model's own error text is never shown to the
    job's owner (it may hold the operator's internals), only logged."""
    if timeout_s <= 0:
        raise ValueError("timeout_s must be positive")
    infer_inputs = []
    for name, datatype, array in inputs:
        item = grpcclient.InferInput(name, list(array.shape), datatype)
        item.set_data_from_numpy(array)
        infer_inputs.append(item)
    result = await _infer(
        url,
        triton_model,
        timeout_s,
        _map_operator_error,
        model_version=model_version,
        inputs=infer_inputs,
        outputs=[grpcclient.InferRequestedOutput(output)],
    )
    answer: NDArray[Any] | None = result.as_numpy(output)
    return answer


def _map_operator_error(exc: InferenceServerException, triton_model: str) -> TritonInferenceError:
    mapped = _map_server_error(exc, triton_model)
    if mapped.code in (INVALID_INPUT, SANDBOX_FAILED, MODEL_ERROR):
        # Kiln's "CODE: message" convention is not an operator model's: keep its text out
        LOGGER.warning("model %s failed: %s", triton_model, str(exc.message() or "")[:2000])
        message = (
            "Triton rejected the request" if mapped.code == INVALID_INPUT else "the model failed"
        )
        return TritonInferenceError(
            mapped.code if mapped.code != SANDBOX_FAILED else MODEL_ERROR, message
        )
    return mapped
