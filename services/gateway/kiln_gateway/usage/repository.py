"""All SQL of usage: the balance billing announced, the jobs' spend and counts, and the
account's event feed."""

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Row, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from kiln_gateway.tables import AccountEvent, Balance, Job


def _charged() -> Any:
    return func.coalesce(
        func.sum(case((Job.status == "completed", Job.cost_millicredits), else_=0)), 0
    )


async def balance_of(session: AsyncSession, account_id: str) -> Balance | None:
    return await session.get(Balance, account_id)


async def live_spend_since(session: AsyncSession, account_id: str, since: datetime) -> int:
    """Millicredits charged for live jobs completed since `since`."""
    spent = await session.scalar(
        select(_charged()).where(
            Job.account_id == account_id,
            Job.sandbox.is_(False),
            Job.completed_at >= since,
        )
    )
    return int(spent or 0)


async def job_counts(session: AsyncSession, account_id: str) -> Sequence[Row[bool, str, int]]:
    """(sandbox, status, count) rows of the account's jobs."""
    return (
        await session.execute(
            select(Job.sandbox, Job.status, func.count())
            .where(Job.account_id == account_id)
            .group_by(Job.sandbox, Job.status)
        )
    ).all()


async def job_stats(
    session: AsyncSession,
    account_id: str,
    group_by: Literal["day", "model"],
    lower: datetime,
    upper: datetime | None,
) -> Sequence[Row[Any]]:
    """(key, sandbox, jobs, completed, failed, charged) rows of the jobs created in
    [lower, upper) (no end when `upper` is None), grouped by day (UTC) or model."""
    group = func.date(Job.created_at) if group_by == "day" else Job.model
    window = [Job.created_at >= lower]
    if upper is not None:
        window.append(Job.created_at < upper)
    return (
        await session.execute(
            select(
                group.label("key"),
                Job.sandbox,
                func.count(),
                func.sum(case((Job.status == "completed", 1), else_=0)),
                func.sum(case((Job.status == "failed", 1), else_=0)),
                _charged(),
            )
            .where(Job.account_id == account_id, *window)
            .group_by(group, Job.sandbox)
            .order_by(group)
        )
    ).all()


async def account_events_after(
    session: AsyncSession, account_id: str, cursor: int, limit: int
) -> Sequence[AccountEvent]:
    return (
        await session.scalars(
            select(AccountEvent)
            .where(AccountEvent.account_id == account_id, AccountEvent.seq > cursor)
            .order_by(AccountEvent.seq)
            .limit(limit)
        )
    ).all()
