"""The worker: run accepted attempts on Triton, store encrypted results, end each attempt
(docs/architecture.md, "Inference").

Up to `worker_concurrency` attempts run at once, so that Triton's dynamic batcher finds
requests to batch. An attempt that outlives `announce_start_after_s` announces itself with
`job.started`, then sends `job.progress` every `progress_interval_s` (the scheduler's heartbeat);
one that ends sooner says nothing until its end, which carries when it started. Its end —
`job.completed` (the result is stored) or `job.attempt_failed` (code, retryable) — is emitted in
the transaction that deletes its work item, shared with other attempts ending at the same time
(the runtime's group commit). An attempt whose item is gone by then was canceled: its result is
deleted and nothing more is said. A worker killed mid-attempt finds the item at its next start
and runs it again (at-least-once inference, exactly one outcome per attempt); the scheduler
alone decides what follows a failure.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import io
import logging
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import BinaryIO

from kiln_contracts import timestamp
from kiln_contracts.v1 import common_pb2, jobs_pb2
from kiln_crypto import ResultEncryptor
from kiln_inference import repository
from kiln_inference.attempts import (
    InputFile,
    InvalidJobInput,
    TritonCall,
    UnknownModel,
    estimated_progress,
    public_message,
    result_blob_key,
    triton_call,
)
from kiln_inference.config import InferenceSettings
from kiln_inference.handlers import emit_attempt_failed
from kiln_inference.inputs import FetchLimits, InputFileError, fetch_input_file
from kiln_inference.metrics import (
    ATTEMPTS,
    IN_FLIGHT,
    INFERENCE_LATENCY,
    INPUT_FETCH_ERRORS,
    INPUT_FETCH_LATENCY,
    RESULTS_DELETED,
    TRITON_ERRORS,
)
from kiln_inference.repository import WorkItemRow
from kiln_inference.tensors import (
    TensorInputError,
    TensorOutputError,
    build_inputs,
    result_file,
)
from kiln_inference.triton_batches import batcher
from kiln_inference.triton_client import (
    TRITON_TIMEOUT,
    TritonInferenceError,
    encode_request,
    infer_file,
    infer_tensors,
)
from kiln_runtime.blobs import BlobStore
from kiln_runtime.catalog import Catalog
from kiln_runtime.failures import describe
from kiln_runtime.service import Transactions
from kiln_runtime.unit import Unit

log = logging.getLogger(__name__)

TIMEOUT = "TIMEOUT"
# Progress points of an attempt that fetches input files (images, videos).
PROGRESS_INPUT_READY = 0.1
PROGRESS_MODEL_DONE = 0.9
# Results up to this size are sealed in memory before they are written; larger ones through a
# temporary file.
SEALED_IN_MEMORY_MAX = 4 * 1024 * 1024


class AttemptFailure(Exception):
    """How one attempt failed, as the scheduler needs to hear it."""

    def __init__(self, code: str, retryable: bool, message: str | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.retryable = retryable
        self.message = message or public_message(code)


Outcome = jobs_pb2.JobCompleted | AttemptFailure


class _Attempt:
    """One running attempt: its task and where its heartbeat stands."""

    def __init__(self, item: WorkItemRow, dispatch: jobs_pb2.JobDispatched) -> None:
        self.item = item
        self.dispatch = dispatch
        self.started = time.monotonic()
        self.started_at = datetime.now(UTC)
        self.announced = False
        self.progress = 0.0
        # While the model runs, progress is estimated when a heartbeat asks for it.
        self.estimate: Callable[[], float] | None = None
        self.task: asyncio.Task[None] | None = None
        self.stopped = False  # a cancel ended it: it must say nothing more
        # Its outcome is known and on its way to the database: a start or heartbeat now would
        # only add events (the end says what they would).
        self.ending = False


class Worker:
    def __init__(
        self,
        settings: InferenceSettings,
        runtime: Transactions,
        catalog: Catalog,
        blobs: BlobStore,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._settings = settings
        self._runtime = runtime
        self._catalog = catalog
        self._blobs = blobs
        self._now = now
        self._running: dict[str, _Attempt] = {}  # by job id
        self._waiting: deque[WorkItemRow] = deque()
        self._known: set[str] = set()  # item ids running or waiting here
        self._crashes: dict[str, int] = {}
        self._retrying: set[str] = set()  # job ids between a crashed run and its next start
        self.loaded = asyncio.Event()  # what an earlier life left is running or waiting
        self._limits = FetchLimits(
            max_bytes=settings.input_image_max_bytes,
            max_pixels=settings.input_image_max_pixels,
            timeout_s=settings.input_image_timeout_s,
            video_max_bytes=settings.input_video_max_bytes,
            video_max_duration_s=settings.input_video_max_duration_s,
            video_timeout_s=settings.input_video_timeout_s,
        )
        self._tasks: list[asyncio.Task[None]] = []

    # --- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Run what an earlier life left, then the heartbeat and the retention sweep."""
        try:
            for item in await self._runtime.read(repository.pending_items):
                self.start(item)
        finally:
            self.loaded.set()  # the cancel reader waits for this, failed or not
        await asyncio.gather(self._heartbeat_loop(), self._sweep_loop())

    async def close(self) -> None:
        for attempt in list(self._running.values()):
            if attempt.task is not None:
                attempt.task.cancel()
        tasks = [a.task for a in self._running.values() if a.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    def start(self, item: WorkItemRow) -> None:
        """Run an accepted attempt now, or when a slot frees up."""
        if item.id in self._known:
            return
        self._known.add(item.id)
        self._waiting.append(item)
        self._fill()

    def holds(self, job_id: str) -> bool:
        """Whether an attempt of the job runs or waits here."""
        return (
            job_id in self._running
            or job_id in self._retrying
            or any(i.job_id == job_id for i in self._waiting)
        )

    def held_since(self) -> datetime | None:
        """When the oldest job with an attempt here was created."""
        created = [a.dispatch.spec.created_at for a in self._running.values()]
        for item in self._waiting:
            dispatch = jobs_pb2.JobDispatched()
            dispatch.ParseFromString(item.dispatch)
            created.append(dispatch.spec.created_at)
        times = [c.ToDatetime(tzinfo=UTC) for c in created if c.seconds or c.nanos]
        return min(times, default=None)

    def stop(self, job_id: str) -> None:
        """A cancel ended the job's attempt (its item is gone): stop the task if it runs.
        An attempt already ending is left alone: its own transaction decides (it finds the
        item gone and discards its result when the cancel came first; when the end came
        first, the job completed and stopping the task now would delete its result)."""
        attempt = self._running.get(job_id)
        if attempt is not None and attempt.ending:
            return
        if attempt is not None and attempt.task is not None and not attempt.task.done():
            attempt.stopped = True
            attempt.task.cancel()
        for item in [i for i in self._waiting if i.job_id == job_id]:
            self._waiting.remove(item)
            self._known.discard(item.id)

    def _fill(self) -> None:
        while self._waiting and len(self._running) < self._settings.worker_concurrency:
            item = self._waiting.popleft()
            dispatch = jobs_pb2.JobDispatched()
            dispatch.ParseFromString(item.dispatch)
            attempt = _Attempt(item, dispatch)
            self._running[item.job_id] = attempt
            attempt.task = asyncio.create_task(self._run(attempt), name=f"attempt {item.id}")
            IN_FLIGHT.inc()

    def _done(self, attempt: _Attempt) -> None:
        IN_FLIGHT.dec()
        if self._running.get(attempt.item.job_id) is attempt:
            del self._running[attempt.item.job_id]
        self._known.discard(attempt.item.id)
        self._fill()

    # --- one attempt --------------------------------------------------------------------------

    async def _run(self, attempt: _Attempt) -> None:
        item = attempt.item
        try:
            outcome = await self._attempt(attempt)
            attempt.ending = True
            await self._end_trying_again(attempt, outcome)
            self._crashes.pop(item.id, None)
        except asyncio.CancelledError:
            if not attempt.stopped:
                raise  # shutting down: the item stays and the next start runs it again
            await self._discard_result(item)
        except Exception:
            crashes = self._crashes.get(item.id, 0) + 1
            self._crashes[item.id] = crashes
            log.exception("attempt %s crashed (%d time(s))", item.id, crashes)
            if crashes < self._settings.max_local_crashes:
                await asyncio.sleep(1.0)
                self._retrying.add(item.job_id)  # still held meanwhile (a cancel finds it)
                try:
                    self._done(attempt)
                    # Run again only what is still to run: an end whose commit went through
                    # before its error (the answer lost) left no item.
                    with contextlib.suppress(Exception):
                        if not await self._runtime.read(
                            lambda c: repository.item_exists(c, item.id)
                        ):
                            self._crashes.pop(item.id, None)
                            return
                    self.start(item)
                finally:
                    self._retrying.discard(item.job_id)
                return
            self._crashes.pop(item.id, None)
            with contextlib.suppress(Exception):
                await self._end(attempt, AttemptFailure("WORKER_ERROR", retryable=True))
        finally:
            if self._running.get(item.job_id) is attempt:
                self._done(attempt)

    async def _attempt(self, attempt: _Attempt) -> Outcome:
        """Run one attempt to its outcome."""
        item, dispatch = attempt.item, attempt.dispatch
        model = dispatch.spec.model
        try:
            call = triton_call(dispatch, self._catalog, self._settings.sandbox_delay_ms)
            # The worker ends its own attempt at the job's deadline, so that the job's end has
            # one producer: the scheduler fails a job a worker holds only well after it, when
            # no answer came (docs/architecture.md, "The services, briefly"). A result that
            # came before the deadline is stored and completes the job.
            deadline = _deadline_of(dispatch)
            budget = asyncio.timeout((deadline - self._now()).total_seconds())
            try:
                async with budget:
                    if call.hold_until_deadline:
                        await self._hold_until_deadline(attempt, deadline)
                    files: dict[str, bytes] = {}
                    for index, file in enumerate(call.files):
                        # fetching and screening a file is the job's first work: show it moving
                        attempt.progress = PROGRESS_INPUT_READY * (index + 0.5) / len(call.files)
                        files[file.field] = await self._fetch_file(file)
                    if call.files:
                        attempt.progress = PROGRESS_INPUT_READY
                    output, content_type = await self._infer(attempt, call, files)
            except TimeoutError:
                if not budget.expired():
                    raise
                raise AttemptFailure(TIMEOUT, retryable=False) from None
            attempt.progress = PROGRESS_MODEL_DONE
            result = await asyncio.to_thread(
                store_encrypted_result,
                self._blobs,
                account_id=item.account_id,
                job_id=item.job_id,
                attempt=item.attempt,
                result_key=dispatch.spec.result_key,
                output=output,
                content_type=content_type,
                chunk_size=self._settings.result_chunk_size,
            )
            return jobs_pb2.JobCompleted(
                spec=dispatch.spec,
                price_millicredits=dispatch.price_millicredits,
                attempt=dispatch.attempt,
                result=result,
                started_at=timestamp(attempt.started_at),
                completed_at=timestamp(self._now()),
            )
        except TritonInferenceError as exc:
            TRITON_ERRORS.labels(model, exc.code).inc()
            if exc.code == TRITON_TIMEOUT and self._now() >= _deadline_of(dispatch):
                return AttemptFailure(TIMEOUT, retryable=False)  # Triton's wait was the job's
            return AttemptFailure(exc.code, exc.retryable)
        except InputFileError as exc:
            INPUT_FETCH_ERRORS.labels(exc.code).inc()
            return AttemptFailure(exc.code, exc.retryable, exc.message)
        except TensorInputError as exc:
            return AttemptFailure("INVALID_INPUT", retryable=False, message=str(exc))
        except TensorOutputError as exc:
            log.warning("model %s: %s", model, exc)
            TRITON_ERRORS.labels(model, "MODEL_ERROR").inc()
            return AttemptFailure("MODEL_ERROR", retryable=False)
        except UnknownModel:
            return AttemptFailure("UNKNOWN_MODEL", retryable=False)
        except InvalidJobInput as exc:
            return AttemptFailure("INVALID_INPUT", retryable=False, message=str(exc))
        except AttemptFailure as exc:
            return exc

    async def _end_trying_again(self, attempt: _Attempt, outcome: Outcome) -> None:
        """End with this outcome, trying the same end again when its transaction fails: never
        by running the model again, whose result is stored already under the attempt's key."""
        tries = self._settings.max_local_crashes
        for tried in range(1, tries + 1):
            try:
                await self._end(attempt, outcome)
                return
            except Exception as exc:
                if tried == tries:
                    raise
                log.warning(
                    "ending attempt %s failed (%s); trying again", attempt.item.id, describe(exc)
                )
                await asyncio.sleep(1.0)

    async def _end(self, attempt: _Attempt, outcome: Outcome) -> None:
        """Emit the attempt's end with the deletion of its item (one transaction, shared)."""
        item = attempt.item
        model = attempt.dispatch.spec.model
        worker_id = self._settings.worker_id

        def end(unit: Unit) -> bool:
            if not repository.delete_item(unit.connection, item.id):
                # A cancel ended it first, or this very end committed before an error hid
                # that: its result's row (one per attempt) is there only in the second case.
                return isinstance(outcome, jobs_pb2.JobCompleted) and repository.result_stored(
                    unit.connection, outcome.result.blob_key
                )
            if isinstance(outcome, jobs_pb2.JobCompleted):
                repository.store_result(
                    unit.connection, outcome.result.blob_key, item.job_id, unit.now
                )
                unit.emit("job.completed", outcome, account_id=item.account_id, job_id=item.job_id)
            else:
                emit_attempt_failed(
                    unit,
                    account_id=item.account_id,
                    job_id=item.job_id,
                    attempt=item.attempt,
                    code=outcome.code,
                    retryable=outcome.retryable,
                    worker_id=worker_id,
                    message=outcome.message,
                )
            return True

        if not await self._runtime.write(end):
            if isinstance(outcome, jobs_pb2.JobCompleted):
                await self._discard_result(item)
            return
        if isinstance(outcome, jobs_pb2.JobCompleted):
            ATTEMPTS.labels(model, "completed").inc()
        else:
            log.warning("job %s attempt %d failed: %s", item.job_id, item.attempt, outcome.code)
            ATTEMPTS.labels(model, "timeout" if outcome.code == TIMEOUT else "failed").inc()

    async def _discard_result(self, item: WorkItemRow) -> None:
        """A result the attempt may have stored before a cancel stopped it goes too."""
        with contextlib.suppress(Exception):
            await asyncio.to_thread(
                self._blobs.delete, result_blob_key(item.account_id, item.job_id, item.attempt)
            )

    async def _hold_until_deadline(self, attempt: _Attempt, deadline: datetime) -> None:
        """Sandbox outcome "timeout": answer nothing, showing progress, until the attempt's
        deadline ends it (TIMEOUT)."""
        total = max((deadline - self._now()).total_seconds(), 1e-3)
        started = time.monotonic()
        while True:
            await asyncio.sleep(self._settings.progress_interval_s)
            attempt.progress = min(0.85, 0.85 * (time.monotonic() - started) / total)

    async def _fetch_file(self, file: InputFile) -> bytes:
        with INPUT_FETCH_LATENCY.time():
            return await fetch_input_file(
                file.url, file.kind, self._limits, allow_loopback=self._settings.allow_loopback_urls
            )

    async def _infer(
        self, attempt: _Attempt, call: TritonCall, files: dict[str, bytes]
    ) -> tuple[bytes, str]:
        timeout_s = (_deadline_of(attempt.dispatch) - self._now()).total_seconds()
        if timeout_s <= 0:
            raise AttemptFailure(TIMEOUT, retryable=False)
        started = time.monotonic()
        base = attempt.progress
        attempt.estimate = lambda: estimated_progress(
            time.monotonic() - started, call.expected_s, base, PROGRESS_MODEL_DONE
        )
        try:
            with INFERENCE_LATENCY.labels(attempt.dispatch.spec.model).time():
                # Cancelling the attempt's task cancels its gRPC call, or (batched) leaves its
                # row's answer unread.
                if call.tensors is not None:
                    return await self._infer_tensors(call, files, timeout_s), call.content_type
                request = dict(call.request)
                for file in call.files:
                    if file.field in files:
                        encoded = base64.b64encode(files[file.field]).decode("ascii")
                        request[file.request_field] = encoded
                server = call.server or self._settings.triton_grpc_url
                if call.batching is not None:
                    rows = batcher(
                        server,
                        call.triton_model,
                        call.batch_class,
                        call.batching.rows,
                        call.batching.calls,
                    )
                    output, content_type = await rows.infer(encode_request(request), timeout_s)
                else:
                    output, content_type = await infer_file(
                        server, call.triton_model, request, timeout_s
                    )
        finally:
            attempt.estimate = None
        return output, content_type or call.content_type

    async def _infer_tensors(
        self, call: TritonCall, files: dict[str, bytes], timeout_s: float
    ) -> bytes:
        """An operator's model: the job's input as its tensors, its output tensor as the file."""
        assert call.tensors is not None
        # decoding an input picture to pixels takes a while: not on the event loop
        inputs = await asyncio.to_thread(build_inputs, call.tensors, call.request, files)
        array = await infer_tensors(
            call.server or self._settings.triton_grpc_url,
            call.triton_model,
            call.model_version,
            [(t.name, t.datatype, t.array) for t in inputs],
            call.tensors.output.tensor,
            timeout_s,
        )
        return await asyncio.to_thread(
            result_file, call.tensors.output, array, call.tensors.batching
        )

    # --- heartbeats ---------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        """`job.started` for attempts that outlived the announce delay, `job.progress` every
        progress interval: one shared transaction per round."""
        s = self._settings
        tick = min(s.announce_start_after_s, s.progress_interval_s) / 2
        last_progress = time.monotonic()
        while True:
            await asyncio.sleep(max(tick, 0.01))
            now = time.monotonic()
            progress_due = now - last_progress >= s.progress_interval_s
            if progress_due:
                last_progress = now
            beats = [
                a
                for a in list(self._running.values())
                if not a.stopped
                and not a.ending
                and now - a.started >= s.announce_start_after_s
                and (not a.announced or progress_due)
            ]
            if not beats:
                continue
            try:
                await self._runtime.write(functools.partial(self._beat, attempts=beats))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("heartbeat not written; next round", exc_info=True)

    def _beat(self, unit: Unit, attempts: list[_Attempt]) -> None:
        announce_attempts(unit, attempts, self._settings.worker_id)

    # --- retention ----------------------------------------------------------------------------

    async def sweep_expired_results(self, batch: int = 500) -> int:
        """Delete the results stored longer ago than the retention; returns how many."""
        cutoff = self._now() - timedelta(seconds=self._settings.result_retention_s)
        deleted = 0
        while True:
            keys = await self._runtime.read(lambda c: repository.expired_results(c, cutoff, batch))
            if not keys:
                return deleted
            for key in keys:
                await asyncio.to_thread(self._blobs.delete, key)
            await self._runtime.write(functools.partial(_forget_results, keys=keys, cutoff=cutoff))
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


def announce_attempts(unit: Unit, attempts: Sequence[_Attempt], worker_id: str) -> None:
    """One heartbeat round: `job.started` for an attempt not announced yet, `job.progress` for
    the others (an attempt whose end is on its way says nothing). An attempt counts as
    announced once the round's transaction commits: if it rolls back (and the group commit
    runs it again), the next try announces it again rather than skip its `job.started`."""
    for a in attempts:
        if a.ending:
            continue  # it ended while this round waited for its transaction
        item = a.item
        if not a.announced:
            a.announced = True
            unit.on_rollback(functools.partial(setattr, a, "announced", False))
            unit.emit(
                "job.started",
                jobs_pb2.JobStarted(
                    attempt=item.attempt,
                    worker_id=worker_id,
                    started_at=timestamp(a.started_at),
                ),
                account_id=item.account_id,
                job_id=item.job_id,
            )
        else:
            progress = a.estimate() if a.estimate is not None else a.progress
            unit.emit(
                "job.progress",
                jobs_pb2.JobProgress(attempt=item.attempt, progress=max(0.0, min(progress, 1.0))),
                account_id=item.account_id,
                job_id=item.job_id,
            )


def _deadline_of(dispatch: jobs_pb2.JobDispatched) -> datetime:
    return dispatch.spec.deadline.ToDatetime(tzinfo=UTC)


def _forget_results(unit: Unit, *, keys: list[str], cutoff: datetime) -> None:
    repository.forget_results(unit.connection, keys, cutoff)


def store_encrypted_result(
    blobs: BlobStore,
    *,
    account_id: str,
    job_id: str,
    attempt: int,
    result_key: common_pb2.ResultKey,
    output: bytes,
    content_type: str,
    chunk_size: int,
) -> jobs_pb2.JobResult:
    """Encrypt ``output`` (kiln-hpke-v1, in chunks) to the job's key and write it to ``blobs``.

    A large sealed blob goes through a temporary file, so it is written to the store as a
    stream (multipart on S3), never as a second copy in memory; a small one (most results) is
    sealed in memory, which saves a file's creation and removal per job.
    """
    encryptor = ResultEncryptor(
        job_id=job_id,
        public_key=result_key.public_key,
        key_id=result_key.key_id,
        salt=result_key.salt,
        chunk_size=chunk_size,
    )
    blob_key = result_blob_key(account_id, job_id, attempt)
    sealed: BinaryIO
    with (
        io.BytesIO() if len(output) <= SEALED_IN_MEMORY_MAX else tempfile.TemporaryFile() as sealed
    ):
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
