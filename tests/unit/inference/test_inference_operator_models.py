"""The worker running an operator's model (a catalog entry with ``tensors``) against a stand-in
Triton: the job's input becomes the declared tensors, the output tensor becomes the result file,
and what does not fit fails the attempt with the right code."""

from __future__ import annotations

import io
import wave
from pathlib import Path
from typing import Any

import numpy as np

from kiln_contracts.v1 import jobs_pb2
from kiln_crypto import decrypt_bytes
from kiln_inference import worker as worker_module
from kiln_runtime.catalog import Catalog
from tests.unit.inference.worker_support import SECRET, dispatched, encryption_of, running_worker

CATALOG = Catalog.model_validate(
    {
        "pools": {"cpu-image": {"capacity": 2}},
        "sandbox_pool": "cpu-image",
        "sandbox_triton_model": "sandbox",
        "models": [
            {
                "id": "acme/tone",
                "name": "Tone (Acme)",
                "kind": "audio",
                "content_type": "audio/wav",
                "price": "1",
                "pool": "cpu-image",
                "triton_server": "10.9.8.7:8001",
                "triton_model": "tone",
                "triton_model_version": "2",
                "needs_input_image": False,
                "deadline_s": 30,
                "input_schema": {"type": "object", "properties": {}},
                "tensors": {
                    "batching": True,
                    "inputs": [
                        {"tensor": "HZ", "datatype": "FP32", "field": "hz", "default": 440},
                        {"tensor": "NAME", "datatype": "BYTES", "field": "name"},
                    ],
                    "output": {"tensor": "AUDIO", "encoding": "wav", "sample_rate": 8000},
                },
            }
        ],
    }
)


async def _never_infer_file(*args: Any) -> Any:
    raise AssertionError("an operator model is not called with Kiln's JSON contract")


async def test_the_input_becomes_tensors_and_the_output_the_file(
    tmp_path: Path, monkeypatch: Any
) -> None:
    seen: list[tuple[Any, ...]] = []

    async def infer_tensors(
        url: str, model: str, version: str, inputs: Any, output: str, timeout_s: float
    ) -> Any:
        seen.append((url, model, version, {n: (d, a.tolist()) for n, d, a in inputs}, output))
        return np.linspace(-0.5, 0.5, 800, dtype=np.float32)[None, :]

    monkeypatch.setattr(worker_module, "infer_tensors", infer_tensors)
    async with running_worker(tmp_path, _never_infer_file, monkeypatch, catalog=CATALOG) as h:
        await h.deliver(dispatched("job_tone", "acme/tone", {"name": "la"}))
        (done,) = await h.wait_for("job.completed")
        result = done.message.result  # type: ignore[attr-defined]
        blob = h.blobs.open(result.blob_key).read()
    assert seen == [
        (
            "10.9.8.7:8001",
            "tone",
            "2",
            {"HZ": ("FP32", [[440.0]]), "NAME": ("BYTES", [[b"la"]])},
            "AUDIO",
        )
    ]
    wav = decrypt_bytes(blob, secret=SECRET, job_id="job_tone", encryption=encryption_of(result))
    assert result.content_type == "audio/wav"
    with wave.open(io.BytesIO(wav)) as reader:
        assert (reader.getframerate(), reader.getnframes()) == (8000, 800)


async def test_a_value_that_does_not_fit_is_invalid_input(tmp_path: Path, monkeypatch: Any) -> None:
    async def infer_tensors(*args: Any) -> Any:
        raise AssertionError("not called")

    monkeypatch.setattr(worker_module, "infer_tensors", infer_tensors)
    async with running_worker(tmp_path, _never_infer_file, monkeypatch, catalog=CATALOG) as h:
        await h.deliver(dispatched("job_bad", "acme/tone", {"hz": "loud"}))
        (failed,) = await h.wait_for("job.attempt_failed")
    message = failed.message
    assert isinstance(message, jobs_pb2.JobAttemptFailed)
    assert (message.error_code, message.retryable) == ("INVALID_INPUT", False)


async def test_an_output_that_is_not_the_declared_file_is_a_model_error(
    tmp_path: Path, monkeypatch: Any
) -> None:
    async def infer_tensors(*args: Any) -> Any:
        return np.zeros((1, 4), dtype=np.int64)  # neither floats nor INT16

    monkeypatch.setattr(worker_module, "infer_tensors", infer_tensors)
    async with running_worker(tmp_path, _never_infer_file, monkeypatch, catalog=CATALOG) as h:
        await h.deliver(dispatched("job_odd", "acme/tone", {}))
        (failed,) = await h.wait_for("job.attempt_failed")
    message = failed.message
    assert isinstance(message, jobs_pb2.JobAttemptFailed)
    assert (message.error_code, message.retryable) == ("MODEL_ERROR", False)
