"""The worker: accept dispatched jobs durably, run them on Triton, store encrypted results.

Accepting is one transaction (inbox + work item), so the Kafka offset can be committed at
once and a long model run never holds a partition. Each outcome is emitted in the same
transaction that deletes its work item; a worker killed mid-job finds the item on restart and
runs it again (at-least-once inference, exactly-once outcome per attempt).
"""

import asyncio
import logging
import tempfile
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from kiln_contracts import Event
from kiln_contracts.v1 import jobs_pb2
from kiln_crypto import ResultEncryptor
from kiln_inference.config import InferenceSettings
from kiln_inference.metrics import INFERENCE_LATENCY, TRITON_ERRORS
from kiln_inference.models import MESSAGING, WorkItem
from kiln_inference.service import (
    TritonCall,
    UnknownModel,
    public_message,
    result_blob_key,
    triton_call,
)
from kiln_inference.triton_client import TritonInferenceError, infer_file
from kiln_runtime.blobs import BlobStore
from kiln_runtime.catalog import Catalog
from kiln_runtime.consuming import Handler
from kiln_runtime.db import SessionFactory, transaction
from kiln_runtime.outbox import Outbox, OutboxRelay

log = logging.getLogger(__name__)


def _now_ts() -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(datetime.now(UTC))
    return ts


def make_handlers(wake_workers: asyncio.Event) -> dict[str, Handler]:
    async def on_job_dispatched(session: AsyncSession, event: Event, outbox: Outbox) -> None:
        dispatched = event.message
        assert isinstance(dispatched, jobs_pb2.JobDispatched)
        item_id = f"{event.job_id}:{dispatched.attempt}"
        if await session.get(WorkItem, item_id) is None:
            session.add(
                WorkItem(
                    id=item_id,
                    job_id=event.job_id,
                    account_id=event.account_id,
                    dispatch=dispatched.SerializeToString(deterministic=True),
                    attempt=dispatched.attempt,
                    status="pending",
                )
            )
        wake_workers.set()

    return {"job.dispatched": on_job_dispatched}


class Worker:
    def __init__(
        self,
        settings: InferenceSettings,
        sessions: SessionFactory,
        relay: OutboxRelay,
        catalog: Catalog,
        blobs: BlobStore,
        wakeup: asyncio.Event,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._relay = relay
        self._catalog = catalog
        self._blobs = blobs
        self._wakeup = wakeup
        self._claim_lock = asyncio.Lock()

    async def recover(self) -> None:
        """Items left running by a killed worker go back to pending."""
        async with transaction(self._sessions) as session:
            await session.execute(
                update(WorkItem).where(WorkItem.status == "running").values(status="pending")
            )

    async def run(self) -> None:
        await self.recover()
        await asyncio.gather(*(self._loop() for _ in range(self._settings.worker_concurrency)))

    async def _loop(self) -> None:
        while True:
            item = await self._claim()
            if item is None:
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout=1.0)
                except TimeoutError:
                    pass
                self._wakeup.clear()
                continue
            try:
                await self._run_item(item)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("work item %s crashed; it will be retried", item.id)
                await asyncio.sleep(1.0)
                async with transaction(self._sessions) as session:
                    await session.execute(
                        update(WorkItem).where(WorkItem.id == item.id).values(status="pending")
                    )

    async def _claim(self) -> WorkItem | None:
        """Take the oldest pending item and announce its start, in one transaction."""
        async with self._claim_lock, transaction(self._sessions) as session:
            item = await session.scalar(
                select(WorkItem)
                .where(WorkItem.status == "pending")
                .order_by(WorkItem.accepted_at)
                .limit(1)
            )
            if item is None:
                return None
            item.status = "running"
            outbox = Outbox()
            outbox.emit(
                "job.started",
                jobs_pb2.JobStarted(
                    attempt=item.attempt, worker_id=self._settings.worker_id, started_at=_now_ts()
                ),
                account_id=item.account_id,
                job_id=item.job_id,
            )
            await outbox.write(session, MESSAGING)
        self._relay.wake()
        return item

    async def _run_item(self, item: WorkItem) -> None:
        dispatch = jobs_pb2.JobDispatched()
        dispatch.ParseFromString(item.dispatch)
        started_at = _now_ts()
        outbox = Outbox()
        try:
            call = triton_call(dispatch, self._catalog, self._settings.sandbox_delay_ms)
            output, content_type = await self._infer(dispatch, call)
            result = await asyncio.to_thread(
                self._store_encrypted, item.account_id, item.job_id, dispatch, output, content_type
            )
            outbox.emit(
                "job.completed",
                jobs_pb2.JobCompleted(
                    spec=dispatch.spec,
                    price_millicredits=dispatch.price_millicredits,
                    attempt=dispatch.attempt,
                    result=result,
                    started_at=started_at,
                    completed_at=_now_ts(),
                ),
                account_id=item.account_id,
                job_id=item.job_id,
            )
        except (TritonInferenceError, UnknownModel) as exc:
            code = exc.code if isinstance(exc, TritonInferenceError) else "UNKNOWN_MODEL"
            retryable = isinstance(exc, TritonInferenceError) and exc.retryable
            TRITON_ERRORS.labels(code).inc()
            log.warning("job %s failed: %s (%s)", item.job_id, code, exc)
            outbox.emit(
                "job.failed",
                jobs_pb2.JobFailed(
                    spec=dispatch.spec,
                    price_millicredits=dispatch.price_millicredits,
                    attempt=dispatch.attempt,
                    error_code=code,
                    error_message=public_message(code),
                    retryable=retryable,
                    failed_at=_now_ts(),
                ),
                account_id=item.account_id,
                job_id=item.job_id,
            )
        async with transaction(self._sessions) as session:
            await session.execute(delete(WorkItem).where(WorkItem.id == item.id))
            await outbox.write(session, MESSAGING)
        self._relay.wake()

    async def _infer(self, dispatch: jobs_pb2.JobDispatched, call: TritonCall) -> tuple[bytes, str]:
        deadline = dispatch.spec.deadline.ToDatetime(tzinfo=UTC)
        timeout_s = max((deadline - datetime.now(UTC)).total_seconds(), 1.0)
        with INFERENCE_LATENCY.labels(dispatch.spec.model).time():
            output, content_type = await infer_file(
                self._settings.triton_grpc_url, call.triton_model, call.request, timeout_s
            )
        return output, content_type or call.content_type

    def _store_encrypted(
        self,
        account_id: str,
        job_id: str,
        dispatch: jobs_pb2.JobDispatched,
        output: bytes,
        content_type: str,
    ) -> jobs_pb2.JobResult:
        key = dispatch.spec.result_key
        encryptor = ResultEncryptor(
            job_id=job_id,
            public_key=key.public_key,
            key_id=key.key_id,
            salt=key.salt,
            chunk_size=self._settings.result_chunk_size,
        )
        blob_key = result_blob_key(account_id, job_id)
        with (
            tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024) as plain,
            tempfile.TemporaryFile() as sealed,
        ):
            plain.write(output)
            plain.seek(0)
            encryptor.encrypt_stream(plain, sealed)  # type: ignore[arg-type]
            sealed.seek(0)
            size = self._blobs.write(blob_key, sealed)
        enc = encryptor.encryption
        return jobs_pb2.JobResult(
            blob_key=blob_key,
            content_type=content_type,
            size_bytes=size,
            encryption=jobs_pb2.ResultEncryption(
                scheme=enc.scheme,
                key_id=enc.key_id,
                salt=enc.salt,
                sealed_key=enc.sealed_key,
                chunk_size=enc.chunk_size,
            ),
        )
