"""The worker: accept dispatched jobs durably, run them on Triton, store encrypted results.

Accepting is one transaction (inbox + work item), so the Kafka offset can be committed at
once and a long model run never holds a partition. Each outcome is emitted in the same
transaction that deletes its work item; a worker killed mid-job finds the item on restart and
runs it again (at-least-once inference, exactly-once outcome per attempt).

The worker reports each attempt's end as ``job.completed`` (the result is stored) or
``job.attempt_failed`` (code, retryable); the scheduler alone decides what follows a failure
(another attempt, ``job.failed`` or ``job.canceled``).

Cancel. ``job.cancel_requested`` for a job still pending here drops its work item at once;
for a running one it marks the item ``canceling`` (durable: a restart does not run it again)
and, once that commits, cancels the attempt's task, which stops the Triton call or the fetch
where it is. Both answer ``job.attempt_failed`` with code ``CANCELED``, not retryable. The job
id is remembered, so a dispatch that arrives after its cancel never runs.
"""

import asyncio
import base64
import contextlib
import io
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from kiln_contracts import Event, timestamp
from kiln_contracts.v1 import common_pb2, jobs_pb2
from kiln_crypto import ResultEncryptor
from kiln_inference.config import InferenceSettings
from kiln_inference.inputs import FetchLimits, InputImageError, fetch_input_image
from kiln_inference.metrics import (
    ATTEMPTS,
    IN_FLIGHT,
    INFERENCE_LATENCY,
    INPUT_FETCH_ERRORS,
    INPUT_FETCH_LATENCY,
    RESULTS_DELETED,
    TRITON_ERRORS,
)
from kiln_inference.models import MESSAGING, CanceledJob, StoredResult, WorkItem
from kiln_inference.service import (
    InvalidJobInput,
    TritonCall,
    UnknownModel,
    estimated_progress,
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

CANCELED = "CANCELED"
TIMEOUT = "TIMEOUT"
# Progress points of one attempt: input ready, model done (then encrypt and store).
PROGRESS_INPUT_READY = 0.1
PROGRESS_MODEL_DONE = 0.9


def attempt_failed(
    outbox: Outbox,
    *,
    account_id: str,
    job_id: str,
    attempt: int,
    code: str,
    retryable: bool,
    worker_id: str,
    message: str | None = None,
) -> None:
    outbox.emit(
        "job.attempt_failed",
        jobs_pb2.JobAttemptFailed(
            attempt=attempt,
            error_code=code,
            error_message=message or public_message(code),
            retryable=retryable,
            failed_at=timestamp(),
            worker_id=worker_id,
        ),
        account_id=account_id,
        job_id=job_id,
    )


class AttemptFailure(Exception):
    """How one attempt failed, as the scheduler needs to hear it."""

    def __init__(self, code: str, retryable: bool, message: str | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.retryable = retryable
        self.message = message or public_message(code)


def make_handlers(wake_workers: asyncio.Event, worker_id: str) -> dict[str, Handler]:
    async def on_job_dispatched(session: AsyncSession, event: Event, outbox: Outbox) -> None:
        dispatched = event.message
        assert isinstance(dispatched, jobs_pb2.JobDispatched)
        if await session.get(CanceledJob, event.job_id) is not None:
            attempt_failed(
                outbox,
                account_id=event.account_id,
                job_id=event.job_id,
                attempt=dispatched.attempt,
                code=CANCELED,
                retryable=False,
                worker_id=worker_id,
            )
            return
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

    async def on_job_cancel_requested(session: AsyncSession, event: Event, outbox: Outbox) -> None:
        if await session.get(CanceledJob, event.job_id) is None:
            session.add(CanceledJob(job_id=event.job_id))
        items = (
            await session.scalars(select(WorkItem).where(WorkItem.job_id == event.job_id))
        ).all()
        for item in items:
            if item.status == "pending":
                attempt_failed(
                    outbox,
                    account_id=item.account_id,
                    job_id=item.job_id,
                    attempt=item.attempt,
                    code=CANCELED,
                    retryable=False,
                    worker_id=worker_id,
                )
                ATTEMPTS.labels(_model_of(item), "canceled").inc()
                await session.delete(item)
            else:
                item.status = "canceling"  # the running task stops once this commits

    return {
        "job.dispatched": on_job_dispatched,
        "job.cancel_requested": on_job_cancel_requested,
    }


def _model_of(item: WorkItem) -> str:
    dispatch = jobs_pb2.JobDispatched()
    dispatch.ParseFromString(item.dispatch)
    return dispatch.spec.model


@dataclass
class _Running:
    item_id: str
    task: "asyncio.Task[Outbox]"
    cancel_requested: bool = False


class Worker:
    def __init__(
        self,
        settings: InferenceSettings,
        sessions: SessionFactory,
        relay: OutboxRelay,
        catalog: Catalog,
        blobs: BlobStore,
        wakeup: asyncio.Event,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._relay = relay
        self._catalog = catalog
        self._blobs = blobs
        self._wakeup = wakeup
        self._now = now
        self._claim_lock = asyncio.Lock()
        self._running: dict[str, _Running] = {}
        self._crashes: dict[str, int] = {}
        self._limits = FetchLimits(
            max_bytes=settings.input_image_max_bytes,
            max_pixels=settings.input_image_max_pixels,
            timeout_s=settings.input_image_timeout_s,
        )

    # --- lifecycle ----------------------------------------------------------------------------

    async def recover(self) -> None:
        """Items left running by a killed worker go back to pending; those whose cancel
        arrived while they ran end now, CANCELED."""
        outbox = Outbox()
        async with transaction(self._sessions) as session:
            canceling = (
                await session.scalars(select(WorkItem).where(WorkItem.status == "canceling"))
            ).all()
            for item in canceling:
                attempt_failed(
                    outbox,
                    account_id=item.account_id,
                    job_id=item.job_id,
                    attempt=item.attempt,
                    code=CANCELED,
                    retryable=False,
                    worker_id=self._settings.worker_id,
                )
                await session.delete(item)
            await session.execute(
                update(WorkItem).where(WorkItem.status == "running").values(status="pending")
            )
            await outbox.write(session, MESSAGING)
        self._relay.wake()

    async def run(self) -> None:
        await self.recover()
        await asyncio.gather(
            self._sweep_loop(),
            *(self._loop() for _ in range(self._settings.worker_concurrency)),
        )

    def on_event_committed(self, event: Event) -> None:
        """After a cancel commits: stop the attempt that runs the job here, if one does."""
        if event.type != "job.cancel_requested":
            return
        running = self._running.get(event.job_id)
        if running is not None and not running.task.done():
            running.cancel_requested = True
            running.task.cancel()

    async def _loop(self) -> None:
        while True:
            try:
                item = await self._claim()
            except asyncio.CancelledError:
                raise
            except Exception:
                # e.g. a cancel deleted the item between this claim's read and its write
                log.warning("claiming a work item failed; trying again", exc_info=True)
                await asyncio.sleep(0.2)
                continue
            if item is None:
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout=1.0)
                except TimeoutError:
                    pass
                self._wakeup.clear()
                continue
            try:
                await self._run_item(item)
                self._crashes.pop(item.id, None)
            except asyncio.CancelledError:
                raise
            except Exception:
                crashes = self._crashes.get(item.id, 0) + 1
                self._crashes[item.id] = crashes
                log.exception("work item %s crashed (%d time(s))", item.id, crashes)
                await asyncio.sleep(1.0)
                await self._after_crash(item, crashes)

    async def _after_crash(self, item: WorkItem, crashes: int) -> None:
        async with transaction(self._sessions) as session:
            current = await session.get(WorkItem, item.id)
            if current is None:
                return
            if crashes < self._settings.max_local_crashes and current.status == "running":
                current.status = "pending"
                return
            outbox = Outbox()
            canceled = current.status == "canceling"
            attempt_failed(
                outbox,
                account_id=item.account_id,
                job_id=item.job_id,
                attempt=item.attempt,
                code=CANCELED if canceled else "WORKER_ERROR",
                retryable=not canceled,
                worker_id=self._settings.worker_id,
            )
            await session.delete(current)
            await outbox.write(session, MESSAGING)
        self._crashes.pop(item.id, None)
        self._relay.wake()

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
                    attempt=item.attempt, worker_id=self._settings.worker_id, started_at=timestamp()
                ),
                account_id=item.account_id,
                job_id=item.job_id,
            )
            await outbox.write(session, MESSAGING)
        self._relay.wake()
        return item

    # --- one attempt --------------------------------------------------------------------------

    async def _run_item(self, item: WorkItem) -> None:
        dispatch = jobs_pb2.JobDispatched()
        dispatch.ParseFromString(item.dispatch)
        model = dispatch.spec.model
        task = asyncio.create_task(self._attempt(item, dispatch), name=f"attempt {item.id}")
        running = _Running(item.id, task)
        self._running[item.job_id] = running
        IN_FLIGHT.inc()
        try:
            # a cancel that committed between the claim and now
            if await self._cancel_pending(item.id):
                running.cancel_requested = True
                task.cancel()
            try:
                outbox = await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if not running.cancel_requested or (current and current.cancelling()):
                    raise  # shutting down: the item stays running and recover() re-runs it
                # a result the attempt may have stored before it stopped goes too
                outbox = await self._canceled(item, model)
        finally:
            IN_FLIGHT.dec()
            if self._running.get(item.job_id) is running:
                del self._running[item.job_id]
            if not task.done():
                task.cancel()
        completed = any(envelope.type == "job.completed" for envelope in outbox.envelopes)
        key = result_blob_key(item.account_id, item.job_id)
        async with transaction(self._sessions) as session:
            status = await session.scalar(select(WorkItem.status).where(WorkItem.id == item.id))
            if completed and status == "canceling":
                # the cancel came as the model returned: the job stops here, without a result
                outbox = await self._canceled(item, model)
                completed = False
            await session.execute(delete(WorkItem).where(WorkItem.id == item.id))
            await outbox.write(session, MESSAGING)
            if completed:
                await session.merge(
                    StoredResult(blob_key=key, job_id=item.job_id, stored_at=self._now())
                )
        if completed:
            ATTEMPTS.labels(model, "completed").inc()
        self._relay.wake()

    async def _canceled(self, item: WorkItem, model: str) -> Outbox:
        """The attempt's end when a cancel stopped it: CANCELED, and no result kept."""
        outbox = Outbox()
        attempt_failed(
            outbox,
            account_id=item.account_id,
            job_id=item.job_id,
            attempt=item.attempt,
            code=CANCELED,
            retryable=False,
            worker_id=self._settings.worker_id,
        )
        ATTEMPTS.labels(model, "canceled").inc()
        await asyncio.to_thread(self._blobs.delete, result_blob_key(item.account_id, item.job_id))
        return outbox

    async def _cancel_pending(self, item_id: str) -> bool:
        async with self._sessions() as session:
            status = await session.scalar(select(WorkItem.status).where(WorkItem.id == item_id))
        return status == "canceling"

    async def _attempt(self, item: WorkItem, dispatch: jobs_pb2.JobDispatched) -> Outbox:
        """Run one attempt to its outcome; the returned outbox holds it."""
        outbox = Outbox()
        model = dispatch.spec.model
        started_at = timestamp()
        try:
            call = triton_call(dispatch, self._catalog, self._settings.sandbox_delay_ms)
            if call.hold_past_deadline:
                await self._hold_past_deadline(item, dispatch)
                raise AttemptFailure(TIMEOUT, retryable=False)
            request = call.request
            if call.image_url is not None:
                image = await self._fetch_image(call.image_url)
                request = {**request, "image_b64": base64.b64encode(image).decode("ascii")}
                await self._progress(item, PROGRESS_INPUT_READY)
            output, content_type = await self._infer(item, dispatch, call, request)
            await self._progress(item, PROGRESS_MODEL_DONE)
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
                    completed_at=timestamp(),
                ),
                account_id=item.account_id,
                job_id=item.job_id,
            )
            return outbox
        except TritonInferenceError as exc:
            TRITON_ERRORS.labels(model, exc.code).inc()
            failure = AttemptFailure(exc.code, exc.retryable)
        except InputImageError as exc:
            INPUT_FETCH_ERRORS.labels(exc.code).inc()
            failure = AttemptFailure(exc.code, exc.retryable, exc.message)
        except UnknownModel:
            failure = AttemptFailure("UNKNOWN_MODEL", retryable=False)
        except InvalidJobInput as exc:
            failure = AttemptFailure("INVALID_INPUT", retryable=False, message=str(exc))
        except AttemptFailure as exc:
            failure = exc
        log.warning("job %s attempt %d failed: %s", item.job_id, item.attempt, failure.code)
        ATTEMPTS.labels(model, "timeout" if failure.code == TIMEOUT else "failed").inc()
        attempt_failed(
            outbox,
            account_id=item.account_id,
            job_id=item.job_id,
            attempt=item.attempt,
            code=failure.code,
            retryable=failure.retryable,
            worker_id=self._settings.worker_id,
            message=failure.message,
        )
        return outbox

    async def _hold_past_deadline(self, item: WorkItem, dispatch: jobs_pb2.JobDispatched) -> None:
        """Sandbox outcome "timeout": answer nothing until the deadline has passed (the
        scheduler fails the job with TIMEOUT), then give the attempt up."""
        deadline = dispatch.spec.deadline.ToDatetime(tzinfo=UTC)
        hold_until = deadline + timedelta(seconds=self._settings.sandbox_timeout_grace_s)
        total = max((hold_until - self._now()).total_seconds(), 0.0)
        started = time.monotonic()
        while (left := total - (time.monotonic() - started)) > 0:
            await asyncio.sleep(min(left, self._settings.progress_interval_s))
            elapsed = time.monotonic() - started
            if elapsed < total:
                await self._progress(item, min(0.85, 0.85 * elapsed / max(total, 1e-3)))

    async def _fetch_image(self, url: str) -> bytes:
        with INPUT_FETCH_LATENCY.time():
            return await fetch_input_image(
                url, self._limits, allow_loopback=self._settings.allow_loopback_urls
            )

    async def _infer(
        self,
        item: WorkItem,
        dispatch: jobs_pb2.JobDispatched,
        call: TritonCall,
        request: dict[str, object],
    ) -> tuple[bytes, str]:
        deadline = dispatch.spec.deadline.ToDatetime(tzinfo=UTC)
        timeout_s = (deadline - self._now()).total_seconds()
        if timeout_s <= 0:
            raise AttemptFailure(TIMEOUT, retryable=False)
        call_task = asyncio.create_task(
            infer_file(self._settings.triton_grpc_url, call.triton_model, request, timeout_s)
        )
        started = time.monotonic()
        try:
            with INFERENCE_LATENCY.labels(dispatch.spec.model).time():
                while True:
                    done, _ = await asyncio.wait(
                        {call_task}, timeout=self._settings.progress_interval_s
                    )
                    if done:
                        output, content_type = call_task.result()
                        break
                    elapsed = time.monotonic() - started
                    await self._progress(
                        item,
                        estimated_progress(
                            elapsed, call.expected_s, PROGRESS_INPUT_READY, PROGRESS_MODEL_DONE
                        ),
                    )
        finally:
            if not call_task.done():
                call_task.cancel()  # cancels the gRPC call
                with contextlib.suppress(BaseException):
                    await call_task
        return output, content_type or call.content_type

    async def _progress(self, item: WorkItem, progress: float) -> None:
        outbox = Outbox()
        outbox.emit(
            "job.progress",
            jobs_pb2.JobProgress(attempt=item.attempt, progress=max(0.0, min(progress, 1.0))),
            account_id=item.account_id,
            job_id=item.job_id,
        )
        async with transaction(self._sessions) as session:
            await outbox.write(session, MESSAGING)
        self._relay.wake()

    def _store_encrypted(
        self,
        account_id: str,
        job_id: str,
        dispatch: jobs_pb2.JobDispatched,
        output: bytes,
        content_type: str,
    ) -> jobs_pb2.JobResult:
        return store_encrypted_result(
            self._blobs,
            account_id=account_id,
            job_id=job_id,
            result_key=dispatch.spec.result_key,
            output=output,
            content_type=content_type,
            chunk_size=self._settings.result_chunk_size,
        )

    # --- retention ----------------------------------------------------------------------------

    async def sweep_expired_results(self, batch: int = 500) -> int:
        """Delete the results stored longer ago than the retention; returns how many."""
        cutoff = self._now() - timedelta(seconds=self._settings.result_retention_s)
        deleted = 0
        while True:
            async with self._sessions() as session:
                keys = (
                    await session.scalars(
                        select(StoredResult.blob_key)
                        .where(StoredResult.stored_at < cutoff)
                        .order_by(StoredResult.stored_at)
                        .limit(batch)
                    )
                ).all()
            if not keys:
                return deleted
            for key in keys:
                await asyncio.to_thread(self._blobs.delete, key)
            async with transaction(self._sessions) as session:
                await session.execute(delete(StoredResult).where(StoredResult.blob_key.in_(keys)))
                # cancels old enough to matter no more go too
                await session.execute(delete(CanceledJob).where(CanceledJob.canceled_at < cutoff))
            deleted += len(keys)
            RESULTS_DELETED.inc(len(keys))

    async def _sweep_loop(self) -> None:
        while True:
            try:
                count = await self.sweep_expired_results()
                if count:
                    log.info("deleted %d result(s) past their retention", count)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the result retention sweep failed; it runs again later")
            await asyncio.sleep(self._settings.retention_sweep_interval_s)


def store_encrypted_result(
    blobs: BlobStore,
    *,
    account_id: str,
    job_id: str,
    result_key: common_pb2.ResultKey,
    output: bytes,
    content_type: str,
    chunk_size: int,
) -> jobs_pb2.JobResult:
    """Encrypt ``output`` (kiln-hpke-v1, in chunks) to the job's key and write it to ``blobs``.

    The sealed blob goes through a temporary file, so a large result is written to the store
    as a stream (multipart on S3), never as a second copy in memory.
    """
    encryptor = ResultEncryptor(
        job_id=job_id,
        public_key=result_key.public_key,
        key_id=result_key.key_id,
        salt=result_key.salt,
        chunk_size=chunk_size,
    )
    blob_key = result_blob_key(account_id, job_id)
    with tempfile.TemporaryFile() as sealed:
        encryptor.encrypt_stream(io.BytesIO(output), sealed)
        sealed.seek(0)
        size = blobs.write(blob_key, sealed)
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
