"""The scheduler's queue in memory: every unfinished job of the partitions this instance owns,
indexed by pool (who waits, who holds a slot, per account), rebuilt from `queued_jobs` when
partitions are assigned (docs/architecture.md, "Scheduler").

Handlers change jobs through `QueueIndex` only, which records what changed; the handlers' batch
writes those rows in its transaction. Nothing here does I/O.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from datetime import datetime

from kiln_scheduler.decisions import ACTIVE_STATUSES, FINISHED, Waiting


@dataclass
class QueuedJobState:
    """One job as the scheduler holds it (the columns of `queued_jobs`)."""

    job_id: str
    account_id: str
    pool: str
    spec: bytes
    price_millicredits: int
    status: str  # queued | dispatched | running | canceling | cancel_requested | finished
    attempt: int = 0
    seq: int | None = None  # the row's key: arrival order (None until inserted)
    enqueued_at: datetime | None = None
    dispatched_at: datetime | None = None
    finished_at: datetime | None = None
    deadline_at: datetime | None = None
    ready_at: datetime | None = None
    started_at: datetime | None = None
    last_seen_at: datetime | None = None
    queue_position: int | None = None
    queue_reason: str | None = None
    last_error_code: str | None = None
    outcome: str | None = None
    version: int = 0  # the row's version this copy was read or last written at

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    def waiting(self) -> Waiting:
        assert self.seq is not None
        return Waiting(self.job_id, self.account_id, self.seq, self.ready_at)


COLUMNS = tuple(f.name for f in fields(QueuedJobState))


@dataclass
class QueueIndex:
    jobs: dict[str, QueuedJobState] = field(default_factory=dict)
    _waiting: dict[str, dict[str, QueuedJobState]] = field(
        default_factory=lambda: defaultdict(dict)
    )
    _in_flight: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    _deadlines: list[tuple[datetime, str]] = field(default_factory=list)
    # What changed since `take_changes`: rows to insert, rows to update.
    _new: dict[str, QueuedJobState] = field(default_factory=dict)
    _changed: dict[str, QueuedJobState] = field(default_factory=dict)

    # --- reading --------------------------------------------------------------------------

    def get(self, job_id: str) -> QueuedJobState | None:
        return self.jobs.get(job_id)

    def unwritten(self, job_id: str) -> QueuedJobState | None:
        """The job as changed since `take_changes`, finished ones included (they leave `jobs`
        at once, their rows only when the transaction writes them)."""
        return self._changed.get(job_id) or self._new.get(job_id)

    def waiting_in(self, pool: str) -> list[QueuedJobState]:
        return list(self._waiting.get(pool, {}).values())

    def in_flight_by_account(self, pool: str) -> dict[str, int]:
        return {a: n for a, n in self._in_flight.get(pool, Counter()).items() if n > 0}

    def in_flight(self, pool: str) -> int:
        return sum(self._in_flight.get(pool, Counter()).values())

    def active(self) -> list[QueuedJobState]:
        return [j for j in self.jobs.values() if j.active]

    def pools_with_waiting(self) -> list[str]:
        return sorted(p for p, w in self._waiting.items() if w)

    def oldest_unstarted_dispatch(self, pool: str) -> tuple[datetime | None, int]:
        """The oldest dispatch of the pool not started yet, and how many of its jobs started."""
        oldest: datetime | None = None
        started = 0
        for job in self.jobs.values():
            if job.pool != pool or not job.active:
                continue
            if job.started_at is not None:
                started += 1
            elif job.dispatched_at is not None and (oldest is None or job.dispatched_at < oldest):
                oldest = job.dispatched_at
        return oldest, started

    def past_deadline(self, now: datetime) -> Iterator[QueuedJobState]:
        """Waiting jobs whose deadline passed (the timer fails them)."""
        while self._deadlines and self._deadlines[0][0] <= now:
            _deadline, job_id = heapq.heappop(self._deadlines)
            job = self.jobs.get(job_id)
            if job is not None and job.status == "queued" and job.deadline_at is not None:
                yield job

    # --- changing -------------------------------------------------------------------------

    def load(self, rows: Iterable[QueuedJobState]) -> None:
        """Start over from the database's rows (partitions assigned, or a rolled-back batch)."""
        self.jobs.clear()
        self._waiting.clear()
        self._in_flight.clear()
        self._deadlines.clear()
        self._new.clear()
        self._changed.clear()
        for row in rows:
            if row.status != FINISHED:
                self._track(row)

    def add(self, job: QueuedJobState) -> None:
        self._track(job)
        self._new[job.job_id] = job

    def _track(self, job: QueuedJobState) -> None:
        self.jobs[job.job_id] = job
        if job.status == "queued":
            self._waiting[job.pool][job.job_id] = job
            if job.deadline_at is not None:
                heapq.heappush(self._deadlines, (job.deadline_at, job.job_id))
        elif job.active:
            self._in_flight[job.pool][job.account_id] += 1

    def update(self, job: QueuedJobState, **changes: object) -> None:
        """Change a tracked job's columns, keeping the indexes and the change list current."""
        before_status, before_pool = job.status, job.pool
        was_active = job.active
        for name, value in changes.items():
            setattr(job, name, value)
        if before_status == "queued" and (job.status != "queued" or job.pool != before_pool):
            self._waiting[before_pool].pop(job.job_id, None)
        if was_active and (not job.active or job.pool != before_pool):
            self._in_flight[before_pool][job.account_id] -= 1
        if job.status == "queued" and (before_status != "queued" or job.pool != before_pool):
            self._waiting[job.pool][job.job_id] = job
            if job.deadline_at is not None:
                heapq.heappush(self._deadlines, (job.deadline_at, job.job_id))
        if job.active and (not was_active or job.pool != before_pool):
            self._in_flight[job.pool][job.account_id] += 1
        if job.status == FINISHED:
            self.jobs.pop(job.job_id, None)
        if job.job_id not in self._new:
            self._changed[job.job_id] = job

    def take_new(self) -> list[QueuedJobState]:
        """The rows to insert since the last call (their later changes go with the insert)."""
        new = list(self._new.values())
        self._new.clear()
        return new

    def take_changes(self) -> tuple[list[QueuedJobState], list[QueuedJobState]]:
        """(new rows, changed rows) since the last call, for the transaction to write."""
        new, changed = list(self._new.values()), list(self._changed.values())
        self._new.clear()
        self._changed.clear()
        return new, changed
