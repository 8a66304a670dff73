"""A worker on a SQLite file with a stand-in Triton, for worker tests: events go through the
handlers as the consumer runs them (kiln_runtime.testing.EventDriver), and what the worker
emits stays in the outbox table."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import select

from kiln_contracts import Event, decode, new_event
from kiln_contracts.v1 import common_pb2, jobs_pb2
from kiln_crypto import ResultEncryption, make_result_key
from kiln_inference import worker as worker_module
from kiln_inference.config import InferenceSettings
from kiln_inference.handlers import Inference
from kiln_inference.migrate import upgrade_connection
from kiln_inference.tables import MESSAGING
from kiln_inference.worker import Worker
from kiln_runtime.blobs import LocalBlobStore
from kiln_runtime.catalog import Catalog, load_catalog
from kiln_runtime.db import Database
from kiln_runtime.testing import EventDriver

SECRET = "sk_live_worker-tests"
ACCOUNT = "acct_worker"
Infer = Callable[[str, str, dict[str, Any], float], Awaitable[tuple[bytes, str]]]


def ts(when: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp


def dispatched(
    job_id: str,
    model: str = "kiln/prompt-to-image",
    input_: dict[str, Any] | None = None,
    *,
    attempt: int = 1,
    sandbox: bool = False,
    outcome: str | None = None,
    delay_ms: int | None = None,
    deadline_s: float = 60.0,
) -> Event:
    material = make_result_key(SECRET)
    now = datetime.now(UTC)
    spec = common_pb2.JobSpec(
        model=model,
        input_json=json.dumps(input_ if input_ is not None else {"prompt": "a lighthouse"}),
        sandbox=sandbox,
        result_key=common_pb2.ResultKey(
            key_id="key_1", public_key=material.public_key, salt=material.salt
        ),
        pool="cpu-image",
        created_at=ts(now),
        deadline=ts(now + timedelta(seconds=deadline_s)),
    )
    if outcome is not None:
        spec.sandbox_outcome = outcome
    if delay_ms is not None:
        spec.sandbox_delay_ms = delay_ms
    message = jobs_pb2.JobDispatched(spec=spec, price_millicredits=5000, attempt=attempt)
    return decode(_encode(new_event("job.dispatched", message, account_id=ACCOUNT, job_id=job_id)))


def cancel_requested(job_id: str) -> Event:
    message = jobs_pb2.JobCancelRequested(requested_by_key_id="key_1")
    return decode(
        _encode(new_event("job.cancel_requested", message, account_id=ACCOUNT, job_id=job_id))
    )


def _encode(envelope: Any) -> bytes:
    from kiln_contracts import encode

    return encode(envelope)


@dataclass
class Harness:
    worker: Worker
    inference: Inference
    driver: EventDriver
    settings: InferenceSettings
    blobs: LocalBlobStore
    db: Database
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def deliver(self, event: Event) -> None:
        await self.driver.process(event)

    async def emitted(self, event_type: str | None = None) -> list[Event]:
        outbox = MESSAGING.outbox
        rows = await self.db.read(
            lambda c: list(c.execute(select(outbox.c.payload).order_by(outbox.c.id)).scalars())
        )
        events = [decode(row) for row in rows]
        return [e for e in events if event_type is None or e.type == event_type]

    async def wait_for(
        self, event_type: str, count: int = 1, timeout_s: float = 10.0
    ) -> list[Event]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            found = await self.emitted(event_type)
            if len(found) >= count:
                return found
            if loop.time() > deadline:
                every = [e.type for e in await self.emitted()]
                raise AssertionError(f"no {count} x {event_type} in {timeout_s} s; got {every}")
            await asyncio.sleep(0.02)


@asynccontextmanager
async def running_worker(
    tmp_path: Path,
    infer: Infer,
    monkeypatch: Any,
    *,
    start: bool = True,
    catalog: Catalog | None = None,
    **overrides: Any,
) -> AsyncIterator[Harness]:
    """A worker on `tmp_path`'s database; `start=False` accepts events without running them
    (as a worker that is not up yet)."""
    settings = InferenceSettings(
        database_url=f"sqlite:///{tmp_path / 'inference.db'}",
        blob_dir=tmp_path / "blobs",
        worker_concurrency=2,
        progress_interval_s=0.05,
        announce_start_after_s=0.05,
        **overrides,
    )
    db = Database(settings.database_url, service="inference")
    await db.on_writer(lambda: db.write_now(upgrade_connection))
    harness_calls: list[tuple[str, dict[str, Any]]] = []

    async def fake_infer(
        url: str, model: str, request: dict[str, Any], timeout_s: float
    ) -> tuple[bytes, str]:
        harness_calls.append((model, request))
        return await infer(url, model, request, timeout_s)

    monkeypatch.setattr(worker_module, "infer_file", fake_infer)

    class FakeRows:
        """A batched model's rows go to `infer` one by one (batching: test_inference_batches)."""

        def __init__(self, url: str, model: str) -> None:
            self.url, self.model = url, model

        async def infer(self, payload: bytes, timeout_s: float) -> tuple[bytes, str]:
            return await fake_infer(self.url, self.model, json.loads(payload), timeout_s)

    monkeypatch.setattr(worker_module, "batcher", lambda url, model, *_: FakeRows(url, model))
    blobs = LocalBlobStore(settings.blob_dir)
    inference = Inference(settings.worker_id)
    driver = EventDriver(db, MESSAGING, inference.handlers(), group="inference")
    worker = Worker(settings, driver, catalog or load_catalog(), blobs)
    task = None
    if start:
        inference.runner = worker
        task = asyncio.create_task(worker.run())
    try:
        yield Harness(worker, inference, driver, settings, blobs, db, harness_calls)
    finally:
        inference.runner = None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await worker.close()
        await db.dispose()


def encryption_of(result: jobs_pb2.JobResult) -> ResultEncryption:
    """The result's encryption as the job object gives it to the client."""
    return ResultEncryption.from_json(
        {
            "scheme": result.encryption.scheme,
            "key_id": result.encryption.key_id,
            "salt": base64.b64encode(result.encryption.salt).decode(),
            "sealed_key": base64.b64encode(result.encryption.sealed_key).decode(),
            "chunk_size": result.encryption.chunk_size,
        }
    )
