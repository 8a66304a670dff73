"""Running one dynamic batch of a model: each request on its own, then one set of output
tensors for the whole batch.

PyTriton can only fail a whole batch at once (the text of the error then starts with a
traceback; kiln_inference.triton_client extracts the code and message). So that one bad request
never fails the good requests batched with it, a batch whose requests did not all fail with the
same error is answered normally, and each failed request carries its error in the ``error``
output instead (with an empty ``output``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import NDArray

from kiln_modelhost.contract import CONTENT_TYPE_OUTPUT, ERROR_OUTPUT, OUTPUT, SANDBOX_MODEL
from kiln_modelhost.handlers import (
    Handler,
    Result,
    SandboxRequest,
    decode_request,
    parse_sandbox_request,
    sandbox_result,
)
from kiln_modelhost.reference_models.errors import ModelError, ModelRuntimeError

LOGGER = logging.getLogger(__name__)

ObjectArray = NDArray[np.object_]


def _as_model_error(exc: Exception, model: str) -> ModelError:
    if isinstance(exc, ModelError):
        return exc
    LOGGER.exception("unexpected error in model %s", model)
    return ModelRuntimeError("the model failed unexpectedly")


def _error_json(error: ModelError) -> bytes:
    return json.dumps({"code": error.code, "message": error.message}).encode("utf-8")


def pack_results(outcomes: Sequence[Result | ModelError]) -> dict[str, ObjectArray]:
    """The output tensors for one batch; raises when every request failed the same way.

    Raising makes Triton answer every request of the batch with that error. A batch whose
    requests did not all fail alike is answered normally, each failure in the ``error`` output.
    """
    errors = [outcome for outcome in outcomes if isinstance(outcome, ModelError)]
    if errors and len(errors) == len(outcomes) and len({str(e) for e in errors}) == 1:
        raise errors[0]
    outputs: list[bytes] = []
    content_types: list[bytes] = []
    error_texts: list[bytes] = []
    for outcome in outcomes:
        if isinstance(outcome, ModelError):
            outputs.append(b"")
            content_types.append(b"")
            error_texts.append(_error_json(outcome))
        else:
            data, content_type = outcome
            outputs.append(data)
            content_types.append(content_type.encode("ascii"))
            error_texts.append(b"")
    return {
        OUTPUT: _column(outputs),
        CONTENT_TYPE_OUTPUT: _column(content_types),
        ERROR_OUTPUT: _column(error_texts),
    }


def _column(values: Sequence[bytes]) -> ObjectArray:
    # dtype=object keeps each value's bytes exactly (a fixed-width bytes dtype drops trailing NULs)
    column: ObjectArray = np.empty((len(values), 1), dtype=np.object_)
    for index, value in enumerate(values):
        column[index, 0] = value
    return column


def run_batch(model: str, requests: ObjectArray, handler: Handler) -> dict[str, ObjectArray]:
    """Run ``handler`` on each request of a batch, one after the other."""
    started = time.perf_counter()
    outcomes: list[Result | ModelError] = []
    for raw in requests.reshape(-1):
        try:
            outcomes.append(handler(decode_request(raw)))
        except Exception as exc:
            outcomes.append(_as_model_error(exc, model))
    _log_batch(model, outcomes, started)
    return pack_results(outcomes)


def run_sandbox_batch(
    requests: ObjectArray,
    default_delay_ms: int,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, ObjectArray]:
    """Wait out the delays of a sandbox batch together (the longest one), then answer each.

    ``sleep`` is ``time.sleep`` but in tests, which record the waits instead of timing them."""
    started = time.perf_counter()
    parsed: list[SandboxRequest | ModelError] = []
    for raw in requests.reshape(-1):
        try:
            parsed.append(parse_sandbox_request(decode_request(raw), default_delay_ms))
        except Exception as exc:
            parsed.append(_as_model_error(exc, SANDBOX_MODEL))
    delays = [item.delay_ms for item in parsed if isinstance(item, SandboxRequest)]
    if delays:
        sleep(max(delays) / 1000.0)
    outcomes: list[Result | ModelError] = []
    for item in parsed:
        if isinstance(item, ModelError):
            outcomes.append(item)
            continue
        try:
            outcomes.append(sandbox_result(item))
        except Exception as exc:
            outcomes.append(_as_model_error(exc, SANDBOX_MODEL))
    _log_batch(SANDBOX_MODEL, outcomes, started)
    return pack_results(outcomes)


def _log_batch(model: str, outcomes: Sequence[Result | ModelError], started: float) -> None:
    failures = [o.code for o in outcomes if isinstance(o, ModelError)]
    LOGGER.info(
        "model=%s batch=%d failed=%d%s took_ms=%.0f",
        model,
        len(outcomes),
        len(failures),
        f" codes={','.join(failures)}" if failures else "",
        (time.perf_counter() - started) * 1000.0,
    )
