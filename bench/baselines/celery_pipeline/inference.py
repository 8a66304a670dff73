"""The baseline's call to Triton: the ``sandbox`` model that Kiln's sandbox jobs run, through
the synchronous ``tritonclient.grpc`` client (what a Celery task would use).

The tensor names come from kiln_inference.triton_client so that both pipelines speak the one
contract of kiln_modelhost.contract: a BYTES ``request`` (the JSON
``{"kind", "delay_ms", "outcome"}``) in, ``output``, ``content_type`` and ``error`` out.
"""

from __future__ import annotations

import json
import os
import re
import threading
from typing import Any, Final

import numpy as np
import tritonclient.grpc as grpcclient
from numpy.typing import NDArray
from tritonclient.utils import InferenceServerException

from kiln_inference.triton_client import (
    CONTENT_TYPE_OUTPUT,
    ERROR_OUTPUT,
    OUTPUT,
    REQUEST_INPUT,
)

SANDBOX_MODEL: Final = "sandbox"
TIMEOUT_S: Final = 60.0

# The model's own errors travel as "CODE: message" inside Triton's error text.
_MODEL_ERROR_RE: Final = re.compile(r"\b(INVALID_INPUT|SANDBOX_FAILED|MODEL_ERROR): ")
_TRANSIENT_STATUSES: Final = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED")


class ModelError(Exception):
    """The model call failed; ``retryable`` when Triton was unreachable or slow."""

    def __init__(self, code: str, retryable: bool) -> None:
        super().__init__(code)
        self.code = code
        self.retryable = retryable


# One client (one gRPC channel, safe to share between threads) per process: a channel must
# not cross a fork, and the prefork pool forks after this module is imported.
_clients: dict[tuple[int, str], grpcclient.InferenceServerClient] = {}
_clients_lock = threading.Lock()


def _client(url: str) -> grpcclient.InferenceServerClient:
    key = (os.getpid(), url)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = grpcclient.InferenceServerClient(url=url)
            _clients[key] = client
        return client


def _single(result: grpcclient.InferResult, name: str) -> bytes:
    array = result.as_numpy(name)
    if array is None or array.size != 1:
        return b""
    value = array.reshape(-1)[0]
    return value.encode() if isinstance(value, str) else bytes(value)


def run_sandbox(url: str, kind: str, delay_ms: int | None, outcome: str) -> tuple[bytes, str]:
    """Run the sandbox model; returns (file bytes, content type) or raises ModelError."""
    request: dict[str, Any] = {"kind": kind, "delay_ms": delay_ms, "outcome": outcome}
    data: NDArray[np.object_] = np.empty((1, 1), dtype=np.object_)
    data[0, 0] = json.dumps(request).encode()
    infer_input = grpcclient.InferInput(REQUEST_INPUT, [1, 1], "BYTES")
    infer_input.set_data_from_numpy(data)
    outputs = [
        grpcclient.InferRequestedOutput(name)
        for name in (OUTPUT, CONTENT_TYPE_OUTPUT, ERROR_OUTPUT)
    ]
    try:
        result = _client(url).infer(
            SANDBOX_MODEL, [infer_input], outputs=outputs, client_timeout=TIMEOUT_S
        )
    except InferenceServerException as exc:
        found = _MODEL_ERROR_RE.findall(str(exc.message() or ""))
        if found:
            raise ModelError(found[-1], retryable=False) from None
        status = str(exc.status() or "")
        transient = any(word in status for word in _TRANSIENT_STATUSES)
        raise ModelError("TRITON_UNAVAILABLE" if transient else "MODEL_ERROR", transient) from None
    error = _single(result, ERROR_OUTPUT)
    if error:
        # a request that failed inside a batch whose other requests did not
        try:
            code = str(json.loads(error)["code"])
        except (ValueError, KeyError, TypeError):
            code = "MODEL_ERROR"
        raise ModelError(code, retryable=False)
    file = _single(result, OUTPUT)
    content_type = _single(result, CONTENT_TYPE_OUTPUT).decode("ascii", "replace")
    if not file or not content_type:
        raise ModelError("MODEL_ERROR", retryable=False)
    return file, content_type
