"""All of the inference worker's SQL, on a synchronous connection (the runtime's transaction)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import cache
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, delete, select

from kiln_inference.tables import CanceledJob, StoredResult, WorkItem
from kiln_runtime.db import upsert_insert

items = cast(Table, WorkItem.__table__)
canceled_jobs = cast(Table, CanceledJob.__table__)
results = cast(Table, StoredResult.__table__)

_IS_CANCELED = select(canceled_jobs.c.job_id).where(canceled_jobs.c.job_id == bindparam("job"))
_DELETE_ITEM = delete(items).where(items.c.id == bindparam("item"))


# Each attempt runs these two: built once per dialect (building costs more than running them).
@cache
def _accept_statement(dialect: str) -> Any:
    return (
        upsert_insert(dialect)(items)
        .values(
            id=bindparam("v_id"),
            job_id=bindparam("v_job_id"),
            account_id=bindparam("v_account_id"),
            dispatch=bindparam("v_dispatch"),
            attempt=bindparam("v_attempt"),
            status="pending",
            accepted_at=bindparam("v_now"),
        )
        .on_conflict_do_nothing(index_elements=["id"])
    )


@cache
def _store_result_statement(dialect: str) -> Any:
    now: Any = bindparam("v_now")
    return (
        upsert_insert(dialect)(results)
        .values(blob_key=bindparam("v_blob_key"), job_id=bindparam("v_job_id"), stored_at=now)
        .on_conflict_do_update(index_elements=["blob_key"], set_={"stored_at": now})
    )


def is_canceled(connection: Connection, job_id: str) -> bool:
    return connection.execute(_IS_CANCELED, {"job": job_id}).first() is not None


def mark_canceled(connection: Connection, job_id: str, now: datetime) -> None:
    connection.execute(
        upsert_insert(connection.dialect.name)(canceled_jobs)
        .values(job_id=job_id, canceled_at=now)
        .on_conflict_do_nothing(index_elements=["job_id"])
    )


def accept_item(
    connection: Connection,
    *,
    item_id: str,
    job_id: str,
    account_id: str,
    dispatch: bytes,
    attempt: int,
    now: datetime,
) -> bool:
    """Keep a dispatched attempt; False when it was accepted before (a redelivery)."""
    result = connection.execute(
        _accept_statement(connection.dialect.name),
        {
            "v_id": item_id,
            "v_job_id": job_id,
            "v_account_id": account_id,
            "v_dispatch": dispatch,
            "v_attempt": attempt,
            "v_now": now,
        },
    )
    return bool(result.rowcount)


def items_of_job(connection: Connection, job_id: str) -> list[WorkItemRow]:
    rows = connection.execute(select(items).where(items.c.job_id == job_id))
    return [WorkItemRow.of(r) for r in rows]


def pending_items(connection: Connection) -> list[WorkItemRow]:
    rows = connection.execute(select(items).order_by(items.c.accepted_at))
    return [WorkItemRow.of(r) for r in rows]


def delete_item(connection: Connection, item_id: str) -> bool:
    """Remove an attempt's item; False when it was gone (a cancel ended the attempt first)."""
    return bool(connection.execute(_DELETE_ITEM, {"item": item_id}).rowcount)


def item_exists(connection: Connection, item_id: str) -> bool:
    return connection.execute(select(items.c.id).where(items.c.id == item_id)).first() is not None


def result_stored(connection: Connection, blob_key: str) -> bool:
    """Whether an end stored this result (keys are per attempt: only its own end can)."""
    found = connection.execute(select(results.c.blob_key).where(results.c.blob_key == blob_key))
    return found.first() is not None


def store_result(connection: Connection, blob_key: str, job_id: str, now: datetime) -> None:
    connection.execute(
        _store_result_statement(connection.dialect.name),
        {"v_blob_key": blob_key, "v_job_id": job_id, "v_now": now},
    )


def expired_results(connection: Connection, cutoff: datetime, limit: int) -> list[str]:
    return list(
        connection.execute(
            select(results.c.blob_key)
            .where(results.c.stored_at < cutoff)
            .order_by(results.c.stored_at)
            .limit(limit)
        ).scalars()
    )


def forget_results(connection: Connection, keys: Sequence[str], cutoff: datetime) -> None:
    connection.execute(delete(results).where(results.c.blob_key.in_(list(keys))))
    # cancels old enough to matter no more go too
    connection.execute(delete(canceled_jobs).where(canceled_jobs.c.canceled_at < cutoff))


class WorkItemRow:
    """A work item as read (plain attributes, no ORM)."""

    __slots__ = ("account_id", "attempt", "dispatch", "id", "job_id")

    def __init__(self, id: str, job_id: str, account_id: str, dispatch: bytes, attempt: int):
        self.id = id
        self.job_id = job_id
        self.account_id = account_id
        self.dispatch = dispatch
        self.attempt = attempt

    @classmethod
    def of(cls, row: object) -> WorkItemRow:
        return cls(
            row.id,  # type: ignore[attr-defined]
            row.job_id,  # type: ignore[attr-defined]
            row.account_id,  # type: ignore[attr-defined]
            row.dispatch,  # type: ignore[attr-defined]
            int(row.attempt),  # type: ignore[attr-defined]
        )
