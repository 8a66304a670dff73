"""The scheduler's event handlers and its timer, over the queue in memory (queue.py) and its
rows (repository.py).

Handlers change the jobs an event names and mark the pool as touched; once per batch, after the
last handler, `after_batch` writes the new rows (learning their arrival order), runs one
dispatch pass per touched pool and writes every changed row. No lock is taken: each instance
holds the partitions (accounts) it was assigned, and only the pool's slots in use are shared
with other instances (a counter row, moved in the same transaction).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import Connection

from kiln_contracts import Event, timestamp
from kiln_contracts.v1 import common_pb2, credits_pb2, jobs_pb2
from kiln_runtime.batches import EventHandlers
from kiln_runtime.catalog import Catalog
from kiln_runtime.consumer import partition_of
from kiln_runtime.messaging import utcnow
from kiln_runtime.unit import Unit
from kiln_scheduler import repository
from kiln_scheduler.config import SchedulerSettings
from kiln_scheduler.decisions import (
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
from kiln_scheduler.queue import QueuedJobState, QueueIndex

log = logging.getLogger(__name__)


def _when(ts: Timestamp) -> datetime | None:
    if ts.seconds == 0 and ts.nanos == 0:
        return None
    return ts.ToDatetime(tzinfo=UTC)


def _spec(job: QueuedJobState) -> common_pb2.JobSpec:
    spec = common_pb2.JobSpec()
    spec.ParseFromString(job.spec)
    return spec


# A partition given up and assigned again within this long was in a rebalance, not away.
REBALANCE_MOMENT_S = 10.0


class Scheduler:
    def __init__(
        self,
        catalog: Catalog,
        settings: SchedulerSettings,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.catalog = catalog
        self.settings = settings
        self._clock = clock
        # When this instance got each partition it holds (lost-worker timeouts count from it),
        # and when it last gave each one up (a partition back within a moment keeps its time).
        self._watched_since: dict[int, datetime] = {}
        self._given_up: dict[int, tuple[datetime, datetime]] = {}
        self.queue = QueueIndex()
        self.means: dict[str, float | None] = {}
        self._partitions: frozenset[int] | None = None  # None: every partition (tests)
        self._partition_count = 1
        self._stale = True  # the queue must be read again from the database
        self._unit: Unit | None = None
        self._touched: set[str] = set()
        self._announce: set[str] = set()
        self._slots_seen: dict[str, int] = {}
        self._samples: dict[str, int] = {}  # finished jobs per pool since the batch began

    # --- policies ---------------------------------------------------------------------------

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

    def handlers(self) -> EventHandlers:
        return EventHandlers(
            {
                "credits.reserved": self.handle_credits_reserved,
                "job.cancel_requested": self.handle_cancel_requested,
                "job.started": self.handle_job_started,
                "job.progress": self.handle_job_progress,
                "job.completed": self.handle_job_completed,
                "job.attempt_failed": self.handle_attempt_failed,
                "job.failed": self.handle_job_failed,
            },
            before_batch=self.before_batch,
            after_batch=self.after_batch,
            on_rollback=self.forget,
            on_assigned=self.assigned,
        )

    # --- the queue in memory ----------------------------------------------------------------

    def assigned(self, connection: Connection, partitions: frozenset[int], count: int) -> None:
        now = self._clock()
        for p, since in self._watched_since.items():
            if p not in partitions:
                self._given_up[p] = (since, now)
        self._watched_since = {p: self._watch_from(p, now) for p in partitions}
        self._partitions, self._partition_count = partitions, max(count, 1)
        repository.recount_slots(connection)
        self._reload(connection)

    def watch_again(self, partitions: frozenset[int] | None = None) -> None:
        """The consumer is holding (a transient failure) or the broker silent on `partitions`
        (an outage): the workers' reports wait unread, so count the lost-worker clocks of
        those partitions (None: all) from now, as after a restart."""
        now = self._clock()
        for partition in self._watched_since:
            if partitions is None or partition in partitions:
                self._watched_since[partition] = now

    def _watch_from(self, partition: int, now: datetime) -> datetime:
        """Held already: since then. Back within a moment of giving it up (aiokafka revokes
        every partition at each rebalance, then assigns): since the first time, so that a
        group that rebalances often does not keep restarting every lost-worker clock. Else:
        now, since nobody may have read the workers' heartbeats meanwhile."""
        if partition in self._watched_since:
            return self._watched_since[partition]
        since, given_up = self._given_up.pop(partition, (now, now))
        return since if (now - given_up).total_seconds() < REBALANCE_MOMENT_S else now

    def _watched_since_of(self, account_id: str) -> datetime | None:
        return self._watched_since.get(partition_of(account_id, self._partition_count))

    def forget(self) -> None:
        """A transaction rolled back: what the queue in memory holds may be ahead of the rows."""
        self._stale = True

    def _reload(self, connection: Connection) -> None:
        rows = repository.unfinished_jobs(connection)
        if self._partitions is not None:
            rows = [r for r in rows if self._holds(r.account_id)]
        self.queue.load(rows)
        self.means = repository.mean_durations(connection)
        self._stale = False
        log.info("scheduler queue loaded: %d unfinished jobs", len(self.queue.jobs))

    def _begin(self, unit: Unit) -> None:
        if self._unit is unit:
            return
        if self._stale:
            self._reload(unit.connection)
        self._unit = unit
        # A tick's transaction that rolls back (and is tried again) leaves the queue in memory
        # ahead of the rows: reload it then (a batch's rollback calls `on_rollback`).
        unit.on_rollback(self.forget)
        self._touched = set()
        self._announce = set()
        self._slots_seen = {pool: self.queue.in_flight(pool) for pool in self._pools()}
        self._samples = {}

    def _pools(self) -> set[str]:
        return {j.pool for j in self.queue.jobs.values() if j.pool} | set(self.catalog.pools)

    def _settle_slots(self, unit: Unit, pool: str, *, count: bool = True) -> int | None:
        """Move the pool's shared count by what this instance's count moved since; returns the
        pool's jobs in flight over every instance (None when not asked and nothing moved)."""
        now_here = self.queue.in_flight(pool)
        delta = now_here - self._slots_seen.get(pool, 0)
        self._slots_seen[pool] = now_here
        if delta == 0 and not count:
            return None
        return repository.move_slots(unit.connection, pool, delta)

    def before_batch(self, unit: Unit, _events: Sequence[Event]) -> None:
        self._begin(unit)

    def after_batch(self, unit: Unit) -> None:
        self._begin(unit)
        repository.insert_jobs(unit.connection, self.queue.take_new())
        for pool in sorted(self._touched):
            self.dispatch_ready(unit, pool, frozenset(self._announce))
        for pool in sorted(self._pools()):
            self._settle_slots(unit, pool, count=False)
        new, changed = self.queue.take_changes()
        repository.insert_jobs(unit.connection, new)
        repository.update_jobs(unit.connection, changed)
        for pool, samples in sorted(self._samples.items()):
            mean = self.means.get(pool)
            if mean is not None:
                repository.record_duration(unit.connection, pool, mean, samples)
        self._samples.clear()
        self._touched.clear()
        self._announce.clear()

    # --- moving the queue -------------------------------------------------------------------

    def dispatch_ready(self, unit: Unit, pool: str, announce: frozenset[str] = frozenset()) -> None:
        """Dispatch what fits, then send job.queued to waiting jobs whose position or reason
        changed (at most `queue_update_batch`, front first, plus every job in `announce`)."""
        now = unit.now
        waiting_jobs = self.queue.waiting_in(pool)
        waiting = [j.waiting() for j in waiting_jobs]
        busy = self.queue.in_flight_by_account(pool)
        in_flight_everywhere = self._settle_slots(unit, pool) or 0
        free = max(self.capacity(pool) - in_flight_everywhere, 0)
        chosen = choose_dispatches(waiting, busy, sum(busy.values()) + free, self.fairness, now)
        for job_id in chosen:
            job = self.queue.jobs[job_id]
            attempt = job.attempt + 1
            self.queue.update(
                job,
                status="dispatched",
                attempt=attempt,
                dispatched_at=now,
                started_at=None,
                last_seen_at=None,
                ready_at=None,
                queue_position=None,
                queue_reason=None,
            )
            unit.emit(
                "job.dispatched",
                jobs_pb2.JobDispatched(
                    spec=_spec(job), price_millicredits=job.price_millicredits, attempt=attempt
                ),
                account_id=job.account_id,
                job_id=job.job_id,
            )
            unit.after_commit(DISPATCHED.labels(pool).inc)
            if job.enqueued_at is not None and attempt == 1:
                waited = max((now - job.enqueued_at).total_seconds(), 0.0)
                unit.after_commit(functools.partial(QUEUE_WAIT.labels(pool).observe, waited))
        self._settle_slots(unit, pool, count=False)
        still = [j for j in waiting_jobs if j.status == "queued"]
        busy = self.queue.in_flight_by_account(pool)
        QUEUE_DEPTH.labels(pool).set(len(still))
        IN_FLIGHT.labels(pool).set(sum(busy.values()))
        if not still:
            return
        mean = self.means.get(pool)
        oldest_unstarted, started = self.queue.oldest_unstarted_dispatch(pool)
        standings = queue_standings(
            [j.waiting() for j in still],
            busy,
            self.capacity(pool),
            self.fairness,
            now,
            self.settings.default_job_duration_s if mean is None else mean,
            workers_absent(oldest_unstarted, started, now, self.settings.no_workers_after_s),
        )
        budget = self.settings.queue_update_batch
        for standing in standings:
            job = self.queue.jobs[standing.job_id]
            changed = (job.queue_position, job.queue_reason) != (standing.position, standing.reason)
            if not changed and standing.job_id not in announce:
                continue
            if budget <= 0 and standing.job_id not in announce:
                continue
            budget -= 1
            self.queue.update(job, queue_position=standing.position, queue_reason=standing.reason)
            unit.emit(
                "job.queued",
                jobs_pb2.JobQueued(
                    queue_position=standing.position,
                    estimated_start_at=timestamp(standing.estimated_start_at),
                    queue_reason=standing.reason,
                ),
                account_id=job.account_id,
                job_id=job.job_id,
            )

    def finish(self, unit: Unit, job: QueuedJobState, outcome: str) -> None:
        unit.after_commit(FINISHED_JOBS.labels(job.pool, outcome).inc)
        self.queue.update(
            job, status=FINISHED, finished_at=unit.now, outcome=outcome, queue_position=None
        )

    def cancel(self, unit: Unit, job: QueuedJobState) -> None:
        self.finish(unit, job, "canceled")
        unit.emit(
            "job.canceled",
            jobs_pb2.JobCanceled(
                spec=_spec(job),
                price_millicredits=job.price_millicredits,
                canceled_at=timestamp(unit.now),
            ),
            account_id=job.account_id,
            job_id=job.job_id,
        )

    def fail(self, unit: Unit, job: QueuedJobState, code: str, message: str, outcome: str) -> None:
        self.queue.update(job, last_error_code=code)
        self.finish(unit, job, outcome)
        unit.emit(
            "job.failed",
            jobs_pb2.JobFailed(
                spec=_spec(job),
                price_millicredits=job.price_millicredits,
                attempt=job.attempt,
                error_code=code,
                error_message=message,
                retryable=False,
                failed_at=timestamp(unit.now),
            ),
            account_id=job.account_id,
            job_id=job.job_id,
        )

    def attempt_failed(
        self, unit: Unit, job: QueuedJobState, *, code: str, message: str, retryable: bool
    ) -> None:
        """The scheduler's decision after the current attempt failed (or was lost)."""
        decision = after_failed_attempt(
            attempt=job.attempt,
            error_code=code,
            error_message=message,
            retryable=retryable,
            cancel_requested=job.status == "canceling",
            deadline=job.deadline_at,
            now=unit.now,
            policy=self.retries,
        )
        self.queue.update(job, last_error_code=code)
        if isinstance(decision, Cancel):
            self.cancel(unit, job)
        elif isinstance(decision, Retry):
            unit.after_commit(RETRIES.labels(job.pool, code).inc)
            self.queue.update(
                job, status="queued", ready_at=decision.at, started_at=None, last_seen_at=None
            )
        else:
            assert isinstance(decision, GiveUp)
            if decision.error_code == "TIMEOUT":  # the worker's own deadline, or past it
                unit.after_commit(TIMEOUTS.labels(job.pool, job.status).inc)
            outcome = "timeout" if decision.error_code == "TIMEOUT" else "failed"
            self.fail(unit, job, decision.error_code, decision.error_message, outcome)

    # --- event handlers ---------------------------------------------------------------------

    def handle_credits_reserved(self, unit: Unit, event: Event) -> None:
        reserved = event.message
        assert isinstance(reserved, credits_pb2.CreditsReserved)
        self._begin(unit)
        existing, ended = self._held(unit, event)
        if existing is not None and existing.status == "cancel_requested":
            self.queue.update(
                existing,
                pool=reserved.spec.pool,
                spec=reserved.spec.SerializeToString(deterministic=True),
                price_millicredits=reserved.amount_millicredits,
            )
            self.cancel(unit, existing)
            return
        if existing is not None or ended:
            return  # reserved twice (a resubmission), or finished already
        pool = reserved.spec.pool
        self.queue.add(
            QueuedJobState(
                job_id=event.job_id,
                account_id=event.account_id,
                pool=pool,
                spec=reserved.spec.SerializeToString(deterministic=True),
                price_millicredits=reserved.amount_millicredits,
                status="queued",
                attempt=0,
                enqueued_at=unit.now,
                deadline_at=_when(reserved.spec.deadline),
            )
        )
        self._touched.add(pool)
        self._announce.add(event.job_id)

    def handle_cancel_requested(self, unit: Unit, event: Event) -> None:
        """A queued job (or one waiting to retry) is canceled at once; a dispatched or running
        one becomes canceling until the worker confirms it stopped (job.attempt_failed with
        CANCELED) or completes (completion wins); a job not yet reserved is canceled when its
        reservation arrives."""
        self._begin(unit)
        job, ended = self._held(unit, event)
        if job is None:
            if ended:
                return
            self.queue.add(
                QueuedJobState(
                    job_id=event.job_id,
                    account_id=event.account_id,
                    pool="",
                    spec=b"",
                    price_millicredits=0,
                    status="cancel_requested",
                    attempt=0,
                    enqueued_at=unit.now,
                )
            )
            return
        if job.status == "queued":
            self.cancel(unit, job)
            self._touched.add(job.pool)
        elif job.status in ("dispatched", "running"):
            self.queue.update(job, status="canceling")

    def _held(self, unit: Unit, event: Event) -> tuple[QueuedJobState | None, bool]:
        """(the event's job as this instance's copy holds it, whether the job has a row the
        copy is not to act on: it ended, or its account is not this instance's). A job the
        copy lacks is read from its row: a row of this instance's accounts that has not ended
        was written by another instance while this copy went stale (see ChangedElsewhere),
        and the queue is read again rather than the event dropped."""
        job = self.queue.get(event.job_id)
        if job is not None:
            return job, False
        if self.queue.unwritten(event.job_id) is not None:
            return None, True  # ended earlier in this transaction
        # A read per event of a job the copy does not hold: mostly the scheduler's own
        # job.failed coming back, and late reports of finished jobs.
        stored = repository.job(unit.connection, event.job_id)
        if stored is None:
            return None, False
        if stored.status != FINISHED:
            if self._holds(stored.account_id):
                raise repository.ChangedElsewhere(f"{event.job_id}: has a row, not in this copy")
            # A reload would not bring it in either: its account maps to another partition
            # (partitions were added, and the event was written before the producer knew).
            log.warning(
                "%s %s: its job is held for another partition; the event is not handled",
                event.type,
                event.job_id,
            )
        return None, True

    def _holds(self, account_id: str) -> bool:
        """Whether this instance's copy of the queue has the account's jobs (see `_reload`)."""
        if self._partitions is None:
            return True
        return partition_of(account_id, self._partition_count) in self._partitions

    def _current_attempt(self, unit: Unit, event: Event, attempt: int) -> QueuedJobState | None:
        job, _ended = self._held(unit, event)
        if job is not None and attempt > job.attempt:
            # Only a scheduler dispatches an attempt, and this one's copy knows of none so
            # late: another instance may have dispatched it while this copy went stale. Then
            # the queue is read again rather than the report called stale; a row as this copy
            # knows it means the report is wrong, and it is ignored below.
            stored = repository.job(unit.connection, job.job_id)
            if stored is not None and stored.version != job.version:
                raise repository.ChangedElsewhere(
                    f"{event.job_id}: attempt {attempt} reported, {job.attempt} known here"
                )
        if job is None or job.status not in ACTIVE_STATUSES or attempt != job.attempt:
            return None
        return job

    def handle_job_started(self, unit: Unit, event: Event) -> None:
        started = event.message
        assert isinstance(started, jobs_pb2.JobStarted)
        self._begin(unit)
        job = self._current_attempt(unit, event, started.attempt)
        if job is None:
            return
        self.queue.update(
            job,
            status="running" if job.status == "dispatched" else job.status,
            started_at=_when(started.started_at) or unit.now,
            last_seen_at=unit.now,
        )

    def handle_job_progress(self, unit: Unit, event: Event) -> None:
        progress = event.message
        assert isinstance(progress, jobs_pb2.JobProgress)
        self._begin(unit)
        job = self._current_attempt(unit, event, progress.attempt)
        if job is None:
            return
        if job.started_at is None:  # progress before (or instead of) job.started
            self.queue.update(
                job,
                started_at=unit.now,
                status="running" if job.status == "dispatched" else job.status,
            )
        self.queue.update(job, last_seen_at=unit.now)

    def handle_job_completed(self, unit: Unit, event: Event) -> None:
        """Completion wins over a pending cancel, and over a retry of an attempt the scheduler
        thought lost (billing captures any job.completed of an unfinished job, so the scheduler
        agrees). A job that already ended (timed out, failed, canceled) stays ended: billing
        has released it and ignores the late completion too."""
        completed = event.message
        assert isinstance(completed, jobs_pb2.JobCompleted)
        self._begin(unit)
        job, _ended = self._held(unit, event)
        if job is None or job.status == "cancel_requested":
            return
        started = _when(completed.started_at) or job.started_at
        ended = _when(completed.completed_at) or unit.now
        if started is not None and completed.attempt == job.attempt:
            sample = max((ended - started).total_seconds(), 0.0)
            mean = updated_mean(self.means.get(job.pool), sample, self.settings.duration_ewma_alpha)
            self.means[job.pool] = mean
            self._samples[job.pool] = self._samples.get(job.pool, 0) + 1  # written by after_batch
        self.finish(unit, job, "completed")
        self._touched.add(job.pool)

    def handle_attempt_failed(self, unit: Unit, event: Event) -> None:
        failed = event.message
        assert isinstance(failed, jobs_pb2.JobAttemptFailed)
        self._begin(unit)
        # Stale: an attempt the scheduler already gave up on (lost, timed out) or a finished job.
        job = self._current_attempt(unit, event, failed.attempt)
        if job is None:
            return
        self.attempt_failed(
            unit,
            job,
            code=failed.error_code,
            message=failed.error_message,
            retryable=failed.retryable,
        )
        self._touched.add(job.pool)

    def handle_job_failed(self, unit: Unit, event: Event) -> None:
        """A final job.failed: the scheduler's own (the job is finished already), or one a
        worker of an older version emitted instead of job.attempt_failed. Either way the job
        has ended for billing and the client, so the scheduler stops holding it."""
        self._begin(unit)
        job, _ended = self._held(unit, event)
        if job is None or job.status == "cancel_requested":
            return
        self.finish(unit, job, "failed")
        self._touched.add(job.pool)

    # --- the timer --------------------------------------------------------------------------

    def tick(self, unit: Unit) -> None:
        """Fail jobs past their deadline (TIMEOUT; a canceling one is canceled), retry attempts
        whose worker is lost (WORKER_LOST), dispatch retries whose backoff ended, and refresh
        the queue metrics. Runs in its own transaction (the runtime's group commit)."""
        self._begin(unit)
        now = unit.now
        pools = set(self.queue.pools_with_waiting())
        for job in list(self.queue.past_deadline(now)):
            pools.add(job.pool)
            unit.after_commit(TIMEOUTS.labels(job.pool, job.status).inc)
            self.fail(
                unit, job, "TIMEOUT", "The job did not finish before its deadline.", "timeout"
            )
        # Only while some partition is newer than the longest timeout does a job's partition
        # matter (hashing every active job's account on every tick is not free).
        longest = max(
            self.liveness.start_timeout_s,
            self.liveness.heartbeat_timeout_s,
            self.settings.deadline_grace_s,
        )
        recent = any((now - t).total_seconds() < longest for t in self._watched_since.values())
        for job in self.queue.active():
            tracked = Tracked(
                job_id=job.job_id,
                status=job.status,
                deadline=job.deadline_at,
                dispatched_at=job.dispatched_at,
                started_at=job.started_at,
                last_seen_at=job.last_seen_at,
                watched_since=self._watched_since_of(job.account_id) if recent else None,
            )
            if past_deadline(tracked, now, self.settings.deadline_grace_s):
                pools.add(job.pool)
                if job.status == "canceling":
                    self.cancel(unit, job)
                else:
                    unit.after_commit(TIMEOUTS.labels(job.pool, job.status).inc)
                    self.fail(
                        unit,
                        job,
                        "TIMEOUT",
                        "The job did not finish before its deadline.",
                        "timeout",
                    )
            elif lost_worker(tracked, now, self.liveness):
                pools.add(job.pool)
                unit.after_commit(WORKERS_LOST.labels(job.pool).inc)
                self.attempt_failed(
                    unit,
                    job,
                    code="WORKER_LOST",
                    message="The worker running the job stopped answering.",
                    retryable=True,
                )
        self._touched |= pools
        self.after_batch(unit)
        for pool in set(self.catalog.pools) | {j.pool for j in self.queue.jobs.values()}:
            waiting = self.queue.waiting_in(pool)
            QUEUE_DEPTH.labels(pool).set(len(waiting))
            oldest = min((j.enqueued_at for j in waiting if j.enqueued_at), default=None)
            age = (now - oldest).total_seconds() if oldest is not None else 0.0
            QUEUE_OLDEST_AGE.labels(pool).set(max(age, 0.0))


def make_handlers(catalog: Catalog, settings: SchedulerSettings) -> EventHandlers:
    return Scheduler(catalog, settings).handlers()
