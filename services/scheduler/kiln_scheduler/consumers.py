"""The scheduler's event handlers and its timer, over the durable queue (models.QueuedJob).

Every handler and every tick first takes the scheduler's write lock (repository.lock): they
decide over whole pools (capacity, fairness), so they run one at a time.
"""

from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.ext.asyncio import AsyncSession

from kiln_contracts import Event, timestamp
from kiln_contracts.v1 import common_pb2, credits_pb2, jobs_pb2
from kiln_runtime.catalog import Catalog
from kiln_runtime.consuming import Handler
from kiln_runtime.messaging import utcnow
from kiln_runtime.outbox import Outbox
from kiln_scheduler import repository
from kiln_scheduler.config import SchedulerSettings
from kiln_scheduler.metrics import (
    DISPATCHED,
    FINISHED_JOBS,
    IN_FLIGHT,
    QUEUE_DEPTH,
    QUEUE_OLDEST_AGE,
    QUEUE_WAIT,
    RETRIES,
    TIMEOUTS,
    WORKERS_LOST,
)
from kiln_scheduler.models import QueuedJob
from kiln_scheduler.repository import aware
from kiln_scheduler.service import (
    ACTIVE_STATUSES,
    FINISHED,
    Cancel,
    FairnessPolicy,
    GiveUp,
    LivenessPolicy,
    Retry,
    RetryPolicy,
    Tracked,
    after_failed_attempt,
    choose_dispatches,
    lost_worker,
    past_deadline,
    queue_standings,
    updated_mean,
    workers_absent,
)


def _when(ts: Timestamp) -> datetime | None:
    if ts.seconds == 0 and ts.nanos == 0:
        return None
    return ts.ToDatetime(tzinfo=UTC)


def _spec(row: QueuedJob) -> common_pb2.JobSpec:
    spec = common_pb2.JobSpec()
    spec.ParseFromString(row.spec)
    return spec


@dataclass
class Scheduler:
    catalog: Catalog
    settings: SchedulerSettings

    @property
    def fairness(self) -> FairnessPolicy:
        s = self.settings
        return FairnessPolicy(
            weights=s.account_weights,
            concurrency_limit=s.account_concurrency_limit,
            concurrency_limits=s.account_concurrency_limits,
        )

    @property
    def retries(self) -> RetryPolicy:
        s = self.settings
        return RetryPolicy(s.max_attempts, s.retry_backoff_base_s, s.retry_backoff_cap_s)

    @property
    def liveness(self) -> LivenessPolicy:
        s = self.settings
        return LivenessPolicy(s.worker_start_timeout_s, s.worker_heartbeat_timeout_s)

    def capacity(self, pool: str) -> int:
        if pool in self.settings.pool_capacity:
            return self.settings.pool_capacity[pool]
        entry = self.catalog.pools.get(pool)
        return entry.capacity if entry is not None else 1

    # --- moving the queue -------------------------------------------------------------------

    async def dispatch_ready(
        self,
        session: AsyncSession,
        pool: str,
        outbox: Outbox,
        now: datetime,
        announce: frozenset[str] = frozenset(),
    ) -> None:
        """Dispatch what fits, then send job.queued to waiting jobs whose position or reason
        changed (at most `queue_update_batch`, front first, plus every job in `announce`)."""
        await session.flush()
        waiting = await repository.waiting_in_pool(session, pool)
        busy = await repository.in_flight_by_account(session, pool)
        capacity = self.capacity(pool)
        chosen = choose_dispatches(waiting, busy, capacity, self.fairness, now)
        for row in await repository.jobs_by_id(session, chosen):
            row.status = "dispatched"
            row.attempt += 1
            row.dispatched_at = now
            row.started_at = None
            row.last_seen_at = None
            row.ready_at = None
            row.queue_position = None
            row.queue_reason = None
            outbox.emit(
                "job.dispatched",
                jobs_pb2.JobDispatched(
                    spec=_spec(row), price_millicredits=row.price_millicredits, attempt=row.attempt
                ),
                account_id=row.account_id,
                job_id=row.job_id,
            )
            busy[row.account_id] = busy.get(row.account_id, 0) + 1
            DISPATCHED.labels(pool).inc()
            enqueued = aware(row.enqueued_at)
            if enqueued is not None and row.attempt == 1:
                QUEUE_WAIT.labels(pool).observe(max((now - enqueued).total_seconds(), 0.0))
        taken = set(chosen)
        still = [w for w in waiting if w.job_id not in taken]
        QUEUE_DEPTH.labels(pool).set(len(still))
        IN_FLIGHT.labels(pool).set(sum(busy.values()))
        if not still:
            return
        mean = await repository.mean_duration(session, pool)
        oldest_unstarted, started = await repository.pool_liveness(session, pool)
        standings = queue_standings(
            still,
            busy,
            capacity,
            self.fairness,
            now,
            self.settings.default_job_duration_s if mean is None else mean,
            workers_absent(oldest_unstarted, started, now, self.settings.no_workers_after_s),
        )
        rows = {
            r.job_id: r for r in await repository.jobs_by_id(session, [s.job_id for s in standings])
        }
        budget = self.settings.queue_update_batch
        for standing in standings:
            row = rows[standing.job_id]
            changed = (row.queue_position, row.queue_reason) != (standing.position, standing.reason)
            if not changed and standing.job_id not in announce:
                continue
            if budget <= 0 and standing.job_id not in announce:
                continue
            budget -= 1
            row.queue_position = standing.position
            row.queue_reason = standing.reason
            outbox.emit(
                "job.queued",
                jobs_pb2.JobQueued(
                    queue_position=standing.position,
                    estimated_start_at=timestamp(standing.estimated_start_at),
                    queue_reason=standing.reason,
                ),
                account_id=row.account_id,
                job_id=row.job_id,
            )

    def finish(self, row: QueuedJob, outcome: str, now: datetime) -> None:
        row.status = FINISHED
        row.finished_at = now
        row.outcome = outcome
        row.queue_position = None
        FINISHED_JOBS.labels(row.pool, outcome).inc()

    def cancel(self, row: QueuedJob, outbox: Outbox, now: datetime) -> None:
        self.finish(row, "canceled", now)
        outbox.emit(
            "job.canceled",
            jobs_pb2.JobCanceled(
                spec=_spec(row),
                price_millicredits=row.price_millicredits,
                canceled_at=timestamp(now),
            ),
            account_id=row.account_id,
            job_id=row.job_id,
        )

    def fail(
        self, row: QueuedJob, outbox: Outbox, now: datetime, code: str, message: str, outcome: str
    ) -> None:
        self.finish(row, outcome, now)
        row.last_error_code = code
        outbox.emit(
            "job.failed",
            jobs_pb2.JobFailed(
                spec=_spec(row),
                price_millicredits=row.price_millicredits,
                attempt=row.attempt,
                error_code=code,
                error_message=message,
                retryable=False,
                failed_at=timestamp(now),
            ),
            account_id=row.account_id,
            job_id=row.job_id,
        )

    def attempt_failed(
        self,
        row: QueuedJob,
        outbox: Outbox,
        now: datetime,
        *,
        code: str,
        message: str,
        retryable: bool,
    ) -> None:
        """The scheduler's decision after the current attempt failed (or was lost)."""
        decision = after_failed_attempt(
            attempt=row.attempt,
            error_code=code,
            error_message=message,
            retryable=retryable,
            cancel_requested=row.status == "canceling",
            deadline=aware(row.deadline_at),
            now=now,
            policy=self.retries,
        )
        row.last_error_code = code
        if isinstance(decision, Cancel):
            self.cancel(row, outbox, now)
        elif isinstance(decision, Retry):
            RETRIES.labels(row.pool, code).inc()
            row.status = "queued"
            row.ready_at = decision.at
            row.started_at = None
            row.last_seen_at = None
        else:
            assert isinstance(decision, GiveUp)
            self.fail(row, outbox, now, decision.error_code, decision.error_message, "failed")

    # --- event handlers ---------------------------------------------------------------------

    async def on_credits_reserved(
        self, session: AsyncSession, event: Event, outbox: Outbox
    ) -> None:
        reserved = event.message
        assert isinstance(reserved, credits_pb2.CreditsReserved)
        await repository.lock(session)
        now = utcnow()
        existing = await repository.job(session, event.job_id)
        if existing is not None and existing.status == "cancel_requested":
            existing.pool = reserved.spec.pool
            existing.spec = reserved.spec.SerializeToString(deterministic=True)
            existing.price_millicredits = reserved.amount_millicredits
            self.cancel(existing, outbox, now)
            return
        if existing is not None:
            return
        pool = reserved.spec.pool
        session.add(
            QueuedJob(
                job_id=event.job_id,
                account_id=event.account_id,
                pool=pool,
                spec=reserved.spec.SerializeToString(deterministic=True),
                price_millicredits=reserved.amount_millicredits,
                status="queued",
                attempt=0,
                enqueued_at=now,
                deadline_at=_when(reserved.spec.deadline),
            )
        )
        await self.dispatch_ready(session, pool, outbox, now, announce=frozenset({event.job_id}))

    async def on_cancel_requested(
        self, session: AsyncSession, event: Event, outbox: Outbox
    ) -> None:
        """A queued job (or one waiting to retry) is canceled at once; a dispatched or running
        one becomes canceling until the worker confirms it stopped (job.attempt_failed with
        CANCELED) or completes (completion wins); a job not yet reserved is canceled when its
        reservation arrives."""
        await repository.lock(session)
        now = utcnow()
        row = await repository.job(session, event.job_id)
        if row is None:
            session.add(
                QueuedJob(
                    job_id=event.job_id,
                    account_id=event.account_id,
                    pool="",
                    spec=b"",
                    price_millicredits=0,
                    status="cancel_requested",
                    attempt=0,
                )
            )
            return
        if row.status == "queued":
            self.cancel(row, outbox, now)
            await self.dispatch_ready(session, row.pool, outbox, now)
        elif row.status in ("dispatched", "running"):
            row.status = "canceling"

    async def on_job_started(self, session: AsyncSession, event: Event, outbox: Outbox) -> None:
        started = event.message
        assert isinstance(started, jobs_pb2.JobStarted)
        await repository.lock(session)
        row = await repository.job(session, event.job_id)
        if row is None or row.status not in ACTIVE_STATUSES or started.attempt != row.attempt:
            return
        now = utcnow()
        if row.status == "dispatched":
            row.status = "running"
        row.started_at = _when(started.started_at) or now
        row.last_seen_at = now

    async def on_job_progress(self, session: AsyncSession, event: Event, outbox: Outbox) -> None:
        progress = event.message
        assert isinstance(progress, jobs_pb2.JobProgress)
        await repository.lock(session)
        row = await repository.job(session, event.job_id)
        if row is None or row.status not in ACTIVE_STATUSES or progress.attempt != row.attempt:
            return
        now = utcnow()
        if row.started_at is None:  # progress before (or instead of) job.started
            row.started_at = now
            if row.status == "dispatched":
                row.status = "running"
        row.last_seen_at = now

    async def on_job_completed(self, session: AsyncSession, event: Event, outbox: Outbox) -> None:
        """Completion wins over a pending cancel, and over a retry of an attempt the scheduler
        thought lost (billing captures any job.completed of an unfinished job, so the scheduler
        agrees). A job that already ended (timed out, failed, canceled) stays ended: billing
        has released it and ignores the late completion too."""
        completed = event.message
        assert isinstance(completed, jobs_pb2.JobCompleted)
        await repository.lock(session)
        row = await repository.job(session, event.job_id)
        if row is None or row.status in (FINISHED, "cancel_requested"):
            return
        now = utcnow()
        started = _when(completed.started_at) or aware(row.started_at)
        ended = _when(completed.completed_at) or now
        if started is not None and completed.attempt == row.attempt:
            mean = await repository.mean_duration(session, row.pool)
            sample = max((ended - started).total_seconds(), 0.0)
            await repository.record_duration(
                session, row.pool, updated_mean(mean, sample, self.settings.duration_ewma_alpha)
            )
        self.finish(row, "completed", now)
        await self.dispatch_ready(session, row.pool, outbox, now)

    async def on_attempt_failed(self, session: AsyncSession, event: Event, outbox: Outbox) -> None:
        failed = event.message
        assert isinstance(failed, jobs_pb2.JobAttemptFailed)
        await repository.lock(session)
        row = await repository.job(session, event.job_id)
        # Stale: an attempt the scheduler already gave up on (lost, timed out) or a finished job.
        if row is None or row.status not in ACTIVE_STATUSES or failed.attempt != row.attempt:
            return
        now = utcnow()
        self.attempt_failed(
            row,
            outbox,
            now,
            code=failed.error_code,
            message=failed.error_message,
            retryable=failed.retryable,
        )
        await self.dispatch_ready(session, row.pool, outbox, now)

    async def on_job_failed(self, session: AsyncSession, event: Event, outbox: Outbox) -> None:
        """A final job.failed: the scheduler's own (the job is finished already), or one a
        worker of an older version emitted instead of job.attempt_failed. Either way the job
        has ended for billing and the client, so the scheduler stops holding it."""
        await repository.lock(session)
        row = await repository.job(session, event.job_id)
        if row is None or row.status in (FINISHED, "cancel_requested"):
            return
        now = utcnow()
        self.finish(row, "failed", now)
        await self.dispatch_ready(session, row.pool, outbox, now)

    def handlers(self) -> dict[str, Handler]:
        return {
            "credits.reserved": self.on_credits_reserved,
            "job.cancel_requested": self.on_cancel_requested,
            "job.started": self.on_job_started,
            "job.progress": self.on_job_progress,
            "job.completed": self.on_job_completed,
            "job.attempt_failed": self.on_attempt_failed,
            "job.failed": self.on_job_failed,
        }

    # --- the timer --------------------------------------------------------------------------

    async def tick(self, session: AsyncSession, outbox: Outbox, now: datetime) -> None:
        """Fail jobs past their deadline (TIMEOUT; a canceling one is canceled), retry attempts
        whose worker is lost (WORKER_LOST), dispatch retries whose backoff ended, and refresh
        the queue metrics. The caller holds the lock (repository.lock) and commits."""
        pools: set[str] = set(await repository.pools_with_waiting(session))
        for row in await repository.due_for_timer(session, now):
            tracked = Tracked(
                job_id=row.job_id,
                status=row.status,
                deadline=aware(row.deadline_at),
                dispatched_at=aware(row.dispatched_at),
                started_at=aware(row.started_at),
                last_seen_at=aware(row.last_seen_at),
            )
            if past_deadline(tracked, now):
                pools.add(row.pool)
                if row.status == "canceling":
                    self.cancel(row, outbox, now)
                else:
                    TIMEOUTS.labels(row.pool, row.status).inc()
                    self.fail(
                        row,
                        outbox,
                        now,
                        "TIMEOUT",
                        "The job did not finish before its deadline.",
                        "timeout",
                    )
            elif lost_worker(tracked, now, self.liveness):
                pools.add(row.pool)
                WORKERS_LOST.labels(row.pool).inc()
                self.attempt_failed(
                    row,
                    outbox,
                    now,
                    code="WORKER_LOST",
                    message="The worker running the job stopped answering.",
                    retryable=True,
                )
        for pool in sorted(pools):
            await self.dispatch_ready(session, pool, outbox, now)
        waiting = {pool: (n, oldest) for pool, n, oldest in await repository.queue_stats(session)}
        for pool in set(self.catalog.pools) | set(waiting):
            n, oldest = waiting.get(pool, (0, None))
            QUEUE_DEPTH.labels(pool).set(n)
            age = (now - oldest).total_seconds() if oldest is not None else 0.0
            QUEUE_OLDEST_AGE.labels(pool).set(max(age, 0.0))


def make_handlers(catalog: Catalog, settings: SchedulerSettings) -> dict[str, Handler]:
    return Scheduler(catalog, settings).handlers()
