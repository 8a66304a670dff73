"""All of the scheduler's SQL, on a synchronous connection (the event runtime's transaction)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from functools import cache
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, func, insert, select, update

from kiln_runtime.db import upsert_insert
from kiln_runtime.failures import TransientError
from kiln_scheduler.decisions import ACTIVE_STATUSES, FINISHED
from kiln_scheduler.queue import COLUMNS, QueuedJobState
from kiln_scheduler.tables import PoolSlots, PoolStats, QueuedJob

jobs_table = cast(Table, QueuedJob.__table__)
stats_table = cast(Table, PoolStats.__table__)
slots_table = cast(Table, PoolSlots.__table__)


class ChangedElsewhere(TransientError):
    """Another scheduler instance wrote jobs this one's copy of the queue holds (or lacks):
    one of them lost the jobs' partition without knowing it yet (cut off from the broker, or
    paused past its session). The transaction rolls back, so nothing decided from the stale
    copy is written or sent, and the copy is read again (docs/architecture.md, "Scheduler")."""


_MUTABLE = tuple(c for c in COLUMNS if c not in ("job_id", "seq", "version"))
_INSERT_JOBS = insert(jobs_table).returning(jobs_table.c.seq, sort_by_parameter_order=True)
_UPDATE_JOB = (
    update(jobs_table)
    .where(
        jobs_table.c.job_id == bindparam("key_job_id"),
        jobs_table.c.version == bindparam("key_version"),
    )
    .values(
        {name: bindparam(f"v_{name}") for name in _MUTABLE} | {"version": jobs_table.c.version + 1}
    )
)

_MOVE_SLOTS = (
    update(slots_table)
    .where(slots_table.c.pool == bindparam("s_pool"))
    .values(in_flight=slots_table.c.in_flight + bindparam("delta"))
    .returning(slots_table.c.in_flight)
)


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every one the scheduler stores is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _state(row: Any) -> QueuedJobState:
    values = {name: getattr(row, name) for name in COLUMNS}
    for name in (
        "enqueued_at",
        "dispatched_at",
        "finished_at",
        "deadline_at",
        "ready_at",
        "started_at",
        "last_seen_at",
    ):
        values[name] = aware(values[name])
    return QueuedJobState(**values)


def unfinished_jobs(connection: Connection) -> list[QueuedJobState]:
    """Every job not finished (waiting, in flight, or a cancel waiting for its reservation)."""
    rows = connection.execute(
        select(jobs_table).where(jobs_table.c.status != FINISHED).order_by(jobs_table.c.seq)
    )
    return [_state(r) for r in rows]


_JOB = select(jobs_table).where(jobs_table.c.job_id == bindparam("job_id"))


def job(connection: Connection, job_id: str) -> QueuedJobState | None:
    row = connection.execute(_JOB, {"job_id": job_id}).first()
    return _state(row) if row is not None else None


def insert_jobs(connection: Connection, jobs: Sequence[QueuedJobState]) -> None:
    """Insert new rows; each job learns its `seq` (its arrival order)."""
    if not jobs:
        return
    params = [{name: getattr(j, name) for name in COLUMNS if name != "seq"} for j in jobs]
    seqs = connection.execute(_INSERT_JOBS, params).scalars().all()
    for j, seq in zip(jobs, seqs, strict=True):
        j.seq = seq


def update_jobs(connection: Connection, jobs: Sequence[QueuedJobState]) -> None:
    if not jobs:
        return
    # In one order on every instance: two transactions on PostgreSQL then lock rows alike.
    jobs = sorted(jobs, key=lambda j: j.job_id)
    updated = connection.execute(
        _UPDATE_JOB,
        [
            {
                "key_job_id": j.job_id,
                "key_version": j.version,
                **{f"v_{name}": getattr(j, name) for name in _MUTABLE},
            }
            for j in jobs
        ],
    ).rowcount
    if updated != len(jobs):
        raise ChangedElsewhere(
            f"{len(jobs) - updated} of {len(jobs)} job rows were changed by another instance"
        )
    for j in jobs:
        j.version += 1


# ------------------------------------------------------------------------------ pool slots


def move_slots(connection: Connection, pool: str, delta: int) -> int:
    """Add `delta` to the pool's jobs in flight; returns the new count."""
    found = connection.execute(_MOVE_SLOTS, {"s_pool": pool, "delta": delta}).scalar()
    if found is not None:
        return int(found)
    connection.execute(
        upsert_insert(connection.dialect.name)(slots_table)
        .values(pool=pool, in_flight=0)
        .on_conflict_do_nothing(index_elements=["pool"])
    )
    return int(connection.execute(_MOVE_SLOTS, {"s_pool": pool, "delta": delta}).scalar_one())


def recount_slots(connection: Connection) -> None:
    """Set every pool's slots in use from the jobs themselves (at assignment: cheap insurance).

    The pools' rows are locked before the jobs are counted (on PostgreSQL; SQLite runs one
    writer at a time): another instance's batch moves its pool's row before it commits its
    jobs, so its jobs are either counted here or added by its move after this commits. A count
    taken before the lock missed jobs committed meanwhile and set the pool below the truth."""
    locked: set[str] = set()
    to_lock = set(connection.execute(select(slots_table.c.pool)).scalars())
    while True:
        for pool in sorted(to_lock):
            move_slots(connection, pool, 0)  # the row stays locked until this commits
        locked |= to_lock
        counts: dict[str, int] = dict(
            connection.execute(
                select(jobs_table.c.pool, func.count())
                .where(jobs_table.c.status.in_(ACTIVE_STATUSES))
                .group_by(jobs_table.c.pool)
            ).all()
        )
        to_lock = set(counts) - locked  # a pool's first row, made meanwhile: lock, count again
        if not to_lock:
            break
    for pool in sorted(locked):
        connection.execute(
            update(slots_table)
            .where(slots_table.c.pool == pool)
            .values(in_flight=int(counts.get(pool, 0)))
        )


# ------------------------------------------------------------------------------ durations


def mean_durations(connection: Connection) -> dict[str, float | None]:
    rows = connection.execute(select(stats_table.c.pool, stats_table.c.mean_duration_s))
    return {pool: mean for pool, mean in rows}


# Each finished job runs it: built once per dialect (building costs more than running it).
@cache
def _record_duration_statement(dialect: str) -> Any:
    make = upsert_insert(dialect)
    mean: Any = bindparam("v_mean")
    samples: Any = bindparam("v_samples")
    statement = make(stats_table).values(
        pool=bindparam("v_pool"), mean_duration_s=mean, samples=samples
    )
    return statement.on_conflict_do_update(
        index_elements=["pool"],
        set_={"mean_duration_s": mean, "samples": stats_table.c.samples + samples},
    )


def record_duration(connection: Connection, pool: str, mean: float, samples: int = 1) -> None:
    """The pool's mean duration now, after `samples` more finished jobs."""
    connection.execute(
        _record_duration_statement(connection.dialect.name),
        {"v_pool": pool, "v_mean": mean, "v_samples": samples},
    )


def queue_stats(connection: Connection) -> list[tuple[str, int, datetime | None]]:
    """Per pool: how many jobs wait and when the oldest was enqueued."""
    rows = connection.execute(
        select(jobs_table.c.pool, func.count(), func.min(jobs_table.c.enqueued_at))
        .where(jobs_table.c.status == "queued")
        .group_by(jobs_table.c.pool)
    )
    return [(pool, int(n), aware(oldest)) for pool, n, oldest in rows]
