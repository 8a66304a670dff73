"""Inference's decisions, as pure functions: what to ask Triton, and what a failure means."""

import json
import math
from dataclasses import dataclass
from typing import Any

from kiln_contracts.v1 import jobs_pb2
from kiln_runtime.catalog import Catalog, ClientBatching, FileKind, TensorContract


@dataclass(frozen=True)
class InputFile:
    """A file the job's input names by URL: fetched, checked and screened by the worker."""

    field: str  # e.g. "image_url"
    url: str
    kind: FileKind

    @property
    def request_field(self) -> str:
        """Where Kiln's JSON contract carries the file: ``image_url`` → ``image_b64``."""
        return self.field.removesuffix("_url") + "_b64"


@dataclass(frozen=True)
class TritonCall:
    triton_model: str
    request: dict[str, Any]
    content_type: str
    # files to fetch first (their URL fields are taken out of ``request``)
    files: tuple[InputFile, ...] = ()
    # a Triton gRPC address other than the worker's own model host
    server: str | None = None
    model_version: str = ""
    # an operator's model: its tensors instead of Kiln's JSON contract
    tensors: TensorContract | None = None
    # a sandbox job that asked for outcome "timeout": no call, hold it until its deadline
    hold_until_deadline: bool = False
    # how long the call should take, for progress estimates
    expected_s: float = 5.0
    # send it with others waiting for the same model (kiln_inference.triton_batches); only
    # calls of one batch class share a request
    batching: ClientBatching | None = None
    batch_class: str = ""

    @property
    def image_url(self) -> str | None:
        """The main picture's URL (models with needs_input_image)."""
        return next((f.url for f in self.files if f.field == "image_url"), None)


class UnknownModel(ValueError):
    pass


class InvalidJobInput(ValueError):
    """The job's input cannot be run (a model needing an image got no image_url)."""


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
        request: dict[str, Any] = {"kind": entry.kind, "delay_ms": delay, "outcome": outcome}
        if entry.content_type == "application/zip":
            request["content_type"] = entry.content_type  # the kind alone would give an MP4
        return TritonCall(
            triton_model=catalog.sandbox_triton_model,
            request=request,
            content_type=entry.content_type,
            hold_until_deadline=outcome == "timeout",
            expected_s=max(delay / 1000.0, 0.1),
            # a batch waits out its longest delay: only equal delays share one
            batching=catalog.sandbox_batching,
            batch_class=f"delay_ms={delay}",
        )
    try:
        request = json.loads(spec.input_json) if spec.input_json else {}
    except ValueError as exc:
        raise InvalidJobInput("the job input is not JSON") from exc
    if not isinstance(request, dict):
        raise InvalidJobInput("the job input is not a JSON object")
    files: list[InputFile] = []
    for field, kind in entry.input_files.items():
        url = request.pop(field, None)
        if url is None and not _required(entry.input_schema, field):
            continue
        if not isinstance(url, str) or not url:
            raise InvalidJobInput(f"this model needs an {field}")
        files.append(InputFile(field=field, url=url, kind=kind))
    return TritonCall(
        triton_model=entry.triton_model,
        request=request,
        content_type=entry.content_type,
        files=tuple(files),
        server=entry.triton_server,
        model_version=entry.triton_model_version,
        tensors=entry.tensors,
        batching=entry.batching,
    )


def _required(schema: dict[str, Any], field: str) -> bool:
    required = schema.get("required", [])
    return isinstance(required, list) and field in required


def estimated_progress(elapsed_s: float, expected_s: float, start: float, end: float) -> float:
    """Progress between ``start`` and ``end`` while a call of about ``expected_s`` runs: it
    follows 1 - e^(-t/expected), so it keeps moving and never reaches ``end`` on its own."""
    share = 1.0 - math.exp(-max(elapsed_s, 0.0) / max(expected_s, 0.05))
    return start + (end - start) * share


def result_blob_key(account_id: str, job_id: str, attempt: int) -> str:
    """One blob per attempt: a job that completes twice (a worker declared lost by mistake,
    a dispatch run again) gets a second file key sealed with the second blob, so each result
    the gateway was told of stays decryptable with the encryption it came with."""
    return f"results/{account_id}/{job_id}.{attempt}"


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
    "WORKER_ERROR": "The worker failed while running this job.",
    "CANCELED": "The job was canceled.",
    "TIMEOUT": "The job did not finish before its deadline.",
    "INPUT_IMAGE_REFUSED": "The input image URL is not allowed.",
    "INPUT_IMAGE_TOO_LARGE": "The input image is too large.",
    "INPUT_IMAGE_INVALID": "The input image could not be read.",
    "INPUT_IMAGE_UNAVAILABLE": "The input image could not be fetched.",
    "INPUT_VIDEO_REFUSED": "The input video URL is not allowed.",
    "INPUT_VIDEO_TOO_LARGE": "The input video is too large or too long.",
    "INPUT_VIDEO_INVALID": "The input video could not be read.",
    "INPUT_VIDEO_UNAVAILABLE": "The input video could not be fetched.",
}


def public_message(code: str) -> str:
    return PUBLIC_MESSAGES.get(code, PUBLIC_MESSAGES["INFERENCE_ERROR"])
