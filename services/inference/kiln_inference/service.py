"""Inference's decisions, as pure functions: what to ask Triton, and what a failure means."""

import json
from dataclasses import dataclass
from typing import Any

from kiln_contracts.v1 import jobs_pb2
from kiln_runtime.catalog import Catalog


@dataclass(frozen=True)
class TritonCall:
    triton_model: str
    request: dict[str, Any]
    content_type: str


class UnknownModel(ValueError):
    pass


def triton_call(
    dispatch: jobs_pb2.JobDispatched, catalog: Catalog, sandbox_delay_ms: int
) -> TritonCall:
    spec = dispatch.spec
    entry = catalog.model(spec.model)
    if entry is None:
        raise UnknownModel(spec.model)
    if spec.sandbox:
        delay = spec.sandbox_delay_ms if spec.HasField("sandbox_delay_ms") else sandbox_delay_ms
        outcome = spec.sandbox_outcome if spec.HasField("sandbox_outcome") else "completed"
        return TritonCall(
            triton_model=catalog.sandbox_triton_model,
            request={"kind": entry.kind, "delay_ms": delay, "outcome": outcome},
            content_type=entry.content_type,
        )
    request = json.loads(spec.input_json) if spec.input_json else {}
    return TritonCall(
        triton_model=entry.triton_model, request=request, content_type=entry.content_type
    )


def result_blob_key(account_id: str, job_id: str) -> str:
    return f"results/{account_id}/{job_id}"


# What the client sees for each failure code; never internal details.
PUBLIC_MESSAGES = {
    "INVALID_INPUT": "The model could not use this input.",
    "SANDBOX_FAILED": "Sandbox job failed as requested.",
    "TRITON_UNAVAILABLE": "The model server was unavailable.",
    "TRITON_TIMEOUT": "The model did not answer in time.",
    "UNKNOWN_MODEL": "The model is not served by this worker.",
    "MODEL_UNAVAILABLE": "The model is not loaded on the model server.",
    "MODEL_ERROR": "The model failed while running this job.",
    "INFERENCE_ERROR": "The model failed while running this job.",
}


def public_message(code: str) -> str:
    return PUBLIC_MESSAGES.get(code, PUBLIC_MESSAGES["INFERENCE_ERROR"])
