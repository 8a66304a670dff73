"""All SQL of jobs: the read model's rows, the account's event feed entries they make, the
events a job emits (outbox rows, in the same transaction), and Idempotency-Key records."""

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    Connection,
    CursorResult,
    Select,
    Table,
    bindparam,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import instrumentation
from sqlalchemy.orm.attributes import set_committed_value

from kiln_contracts.v1 import common_pb2, jobs_pb2
from kiln_gateway.jobs.service import TERMINAL, JobFilters, JobSort, job_summary
from kiln_gateway.pagination import PageRequest, count_rows, fetch_page
from kiln_gateway.tables import MESSAGING, AccountEvent, IdempotencyRecord, Job
from kiln_runtime.outbox import Outbox
from kiln_runtime.unit import Unit

SORT_COLUMNS = {
    "created_at": Job.created_at,
    "started_at": Job.started_at,
    "completed_at": Job.completed_at,
    "status": Job.status,
    "model": Job.model,
}


# ------------------------------------------------------------------------- the read model


async def job_by_id(session: AsyncSession, job_id: str) -> Job | None:
    return await session.get(Job, job_id)


async def account_job(
    session: AsyncSession, account_id: str, job_id: str, *, for_update: bool = False
) -> Job | None:
    """The account's job; another account's job is indistinguishable from a missing one.
    `for_update`: its row locked until the session's transaction ends (PostgreSQL), so that a
    change made from what was read cannot overwrite what the consumer wrote meanwhile."""
    job = await session.get(Job, job_id, with_for_update=for_update)
    if job is None or job.account_id != account_id:
        return None
    return job


def filtered(query: Select[Any], filters: JobFilters, account_id: str) -> Select[Any]:
    query = query.where(Job.account_id == account_id)
    if filters.status:
        query = query.where(Job.status.in_(filters.status))
    if filters.model:
        query = query.where(Job.model == filters.model)
    if filters.created_after:
        query = query.where(Job.created_at > filters.created_after)
    if filters.created_before:
        query = query.where(Job.created_at < filters.created_before)
    return query


def ordering(sort: JobSort) -> list[Any]:
    column = SORT_COLUMNS[sort.field]
    primary = column.desc().nulls_last() if sort.descending else column.asc().nulls_last()
    return [primary, Job.id.desc() if sort.descending else Job.id.asc()]


async def count_jobs(session: AsyncSession, account_id: str, filters: JobFilters) -> int:
    return await count_rows(session, filtered(select(Job), filters, account_id))


async def list_jobs(
    session: AsyncSession,
    account_id: str,
    filters: JobFilters,
    sort: JobSort,
    page: PageRequest,
) -> tuple[Sequence[Job], int]:
    query = filtered(select(Job), filters, account_id).order_by(*ordering(sort))
    return await fetch_page(session, query, page)


# ------------------------------------------------------------------------- changes


def record_account_event(
    session: AsyncSession,
    job: Job,
    event_type: str,
    occurred_at: datetime,
    extra: dict[str, Any] | None = None,
) -> None:
    """An entry of the account's event feed (`GET /events`) about `job`."""
    session.add(
        AccountEvent(
            account_id=job.account_id,
            job_id=job.id,
            type=event_type,
            sandbox=job.sandbox,
            occurred_at=occurred_at,
            data={**job_summary(job), **(extra or {})},
        )
    )


async def add_submitted_job(
    session: AsyncSession, job: Job, spec: common_pb2.JobSpec, now: datetime
) -> None:
    """The new job, its feed entry and its `job.submitted`, in `session`'s transaction."""
    session.add(job)
    record_account_event(session, job, "job.created", now)
    outbox = Outbox()
    outbox.emit(
        "job.submitted",
        jobs_pb2.JobSubmitted(spec=spec),
        account_id=job.account_id,
        job_id=job.id,
    )
    await outbox.write(session, MESSAGING)


async def request_cancel(session: AsyncSession, job: Job, key_id: str, now: datetime) -> bool:
    """Mark `job` canceling and ask the pipeline to cancel it (`job.cancel_requested`); False
    (and nothing done) when the job reached a final state since it was read.

    The status moves only if it is still open: on SQLite the read took no lock, and the read
    model's consumer may have written the job's end in between; a plain write would put a
    finished job back to `canceling` for good (its end was already projected)."""
    moved = await session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status.not_in((*TERMINAL, "canceling")))
        .values(status="canceling")
        .execution_options(synchronize_session=False)
    )
    if cast(CursorResult[Any], moved).rowcount != 1:
        await session.refresh(job)
        return job.status == "canceling"  # asked already, by a request just before this one
    set_committed_value(job, "status", "canceling")
    record_account_event(session, job, "job.canceling", now)
    outbox = Outbox()
    outbox.emit(
        "job.cancel_requested",
        jobs_pb2.JobCancelRequested(requested_by_key_id=key_id),
        account_id=job.account_id,
        job_id=job.id,
    )
    await outbox.write(session, MESSAGING)
    return True


# ------------------------------------------------------------------------- the hot path
# (synchronous Core, on the runtime's group commit: docs/architecture.md, "Hot paths")

jobs_table = cast(Table, Job.__table__)
events_table = cast(Table, AccountEvent.__table__)
idempotency_table = cast(Table, IdempotencyRecord.__table__)
_COLUMNS = {attr.key: c.name for attr in Job.__mapper__.column_attrs for c in attr.columns}
_INSERT_JOB = insert(jobs_table)
_INSERT_EVENT = insert(events_table)
_JOB_BY_ID = select(jobs_table).where(jobs_table.c.id == bindparam("job_id"))
_IDEMPOTENCY = select(idempotency_table).where(
    idempotency_table.c.scope == bindparam("scope"), idempotency_table.c.key == bindparam("key")
)


def insert_submitted_job(unit: Unit, job: Job, spec: common_pb2.JobSpec) -> None:
    """The new job, its feed entry and its `job.submitted`, in the unit's transaction."""
    unit.connection.execute(
        _INSERT_JOB, {column: getattr(job, attr) for attr, column in _COLUMNS.items()}
    )
    unit.connection.execute(
        _INSERT_EVENT,
        {
            "account_id": job.account_id,
            "job_id": job.id,
            "type": "job.created",
            "sandbox": job.sandbox,
            "occurred_at": unit.now,
            "data": job_summary(job),
        },
    )
    unit.emit(
        "job.submitted",
        jobs_pb2.JobSubmitted(spec=spec),
        account_id=job.account_id,
        job_id=job.id,
    )


_ATTRIBUTES = {column: attr for attr, column in _COLUMNS.items()}


def _aware(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


# A `Job` made without its constructor: the declarative constructor sets each attribute through
# SQLAlchemy's instrumentation (about 19 µs a job against 1 µs), and the read model loads a job
# for every event it projects. These objects are read and changed in memory and written back
# with Core statements, never flushed through a session.
_new_job = instrumentation.manager_of_class(Job).new_instance


def job_from_row(row: Any) -> Job:
    """A detached `Job` from a Core row (`metadata` is `job_metadata` on the class)."""
    values = {_ATTRIBUTES[name]: value for name, value in row._mapping.items()}
    for name in ("created_at", "started_at", "completed_at", "estimated_start_at"):
        values[name] = _aware(values[name])
    job = _new_job()
    job.__dict__.update(values)
    return job


def read_job(connection: Connection, job_id: str) -> Job | None:
    row = connection.execute(_JOB_BY_ID, {"job_id": job_id}).first()
    return job_from_row(row) if row is not None else None


def idempotency_record(connection: Connection, scope: str, key: str) -> Any:
    return connection.execute(_IDEMPOTENCY, {"scope": scope, "key": key}).first()


def delete_idempotency_record(connection: Connection, record_id: int) -> None:
    connection.execute(delete(idempotency_table).where(idempotency_table.c.id == record_id))


def add_idempotency_record(
    connection: Connection, scope: str, key: str, fingerprint: str, job_id: str, now: datetime
) -> None:
    """The key and the job it made; unique per (scope, key)."""
    connection.execute(
        insert(idempotency_table).values(
            scope=scope, key=key, fingerprint=fingerprint, job_id=job_id, created_at=now
        )
    )
