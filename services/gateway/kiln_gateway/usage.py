"""Usage, statistics and the account's event feed, all from the gateway's read model."""

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from sqlalchemy import case, func, select

from kiln_gateway.deps import CallerDep, StateDep
from kiln_gateway.errors import ValidationFailed
from kiln_gateway.hostile_input import IsoDate
from kiln_gateway.models import AccountEvent, Balance, Job
from kiln_runtime.money import format_credits

router = APIRouter(tags=["usage"])


def period_start(now: datetime) -> datetime:
    """Usage periods are calendar months in UTC."""
    return now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _charged() -> Any:
    return func.coalesce(
        func.sum(case((Job.status == "completed", Job.cost_millicredits), else_=0)), 0
    )


@router.get("/usage")
async def usage(caller: CallerDep, state: StateDep) -> dict[str, Any]:
    """Balance, reserved credits, what this month cost, and job counts by status (live and
    sandbox apart)."""
    now = datetime.now(UTC)
    start = period_start(now)
    async with state.runtime.sessions() as session:
        balance = await session.get(Balance, caller.account_id)
        spent = await session.scalar(
            select(_charged()).where(
                Job.account_id == caller.account_id,
                Job.sandbox.is_(False),
                Job.completed_at >= start,
            )
        )
        counts = (
            await session.execute(
                select(Job.sandbox, Job.status, func.count())
                .where(Job.account_id == caller.account_id)
                .group_by(Job.sandbox, Job.status)
            )
        ).all()
    by_status: dict[str, dict[str, int]] = {"live": {}, "sandbox": {}}
    for sandbox, status, count in counts:
        by_status["sandbox" if sandbox else "live"][status] = int(count)
    return {
        "data": {
            "balance": format_credits(balance.available_millicredits if balance else 0),
            "reserved": format_credits(balance.reserved_millicredits if balance else 0),
            "period_start": start.isoformat().replace("+00:00", "Z"),
            "spent_this_period": format_credits(int(spent or 0)),
            "jobs": by_status,
        }
    }


@router.get("/usage/stats")
async def usage_stats(
    caller: CallerDep,
    state: StateDep,
    group_by: Literal["day", "model"] = "day",
    start: Annotated[
        IsoDate | None, Query(description="First day (UTC); default 30 days ago.")
    ] = None,
    end: Annotated[
        IsoDate | None, Query(description="Last day (UTC), inclusive; default today.")
    ] = None,
) -> dict[str, Any]:
    """Spend and job counts grouped by day or model over [start, end]; live and sandbox apart."""
    today = datetime.now(UTC).date()
    last = end or today
    first = start or (last - timedelta(days=29))
    if first > last or (last - first).days > 366:
        raise ValidationFailed(
            "Bad date range.", [{"field": "start", "message": "start <= end, at most 366 days"}]
        )
    lower = datetime.combine(first, datetime.min.time(), UTC)
    upper = datetime.combine(last + timedelta(days=1), datetime.min.time(), UTC)
    group = func.date(Job.created_at) if group_by == "day" else Job.model
    async with state.runtime.sessions() as session:
        rows = (
            await session.execute(
                select(
                    group.label("key"),
                    Job.sandbox,
                    func.count(),
                    func.sum(case((Job.status == "completed", 1), else_=0)),
                    func.sum(case((Job.status == "failed", 1), else_=0)),
                    _charged(),
                )
                .where(
                    Job.account_id == caller.account_id,
                    Job.created_at >= lower,
                    Job.created_at < upper,
                )
                .group_by(group, Job.sandbox)
                .order_by(group)
            )
        ).all()
    empty = {"jobs": 0, "completed": 0, "failed": 0, "spent": "0"}
    grouped: dict[str, dict[str, Any]] = {}
    for key, sandbox, count, completed, failed, charged in rows:
        entry = grouped.setdefault(
            str(key), {"key": str(key), "live": dict(empty), "sandbox": dict(empty)}
        )
        entry["sandbox" if sandbox else "live"] = {
            "jobs": int(count),
            "completed": int(completed or 0),
            "failed": int(failed or 0),
            "spent": format_credits(int(charged or 0)),
        }
    return {
        "data": list(grouped.values()),
        "group_by": group_by,
        "start": first.isoformat(),
        "end": last.isoformat(),
    }


@router.get("/events")
async def account_events(
    caller: CallerDep,
    state: StateDep,
    after: str | None = Query(default=None, max_length=40, description="Cursor from `next`."),
    limit: int = Query(default=100, ge=1, le=500),
) -> dict[str, Any]:
    """The account's job events in order, from a cursor: poll with `after=<next>` to
    reconcile instead of trusting webhooks alone."""
    cursor = 0
    if after is not None:
        if not (after.isascii() and after.isdigit()) or len(after) > 18:
            raise ValidationFailed("Bad cursor.", [{"field": "after", "message": "not a cursor"}])
        cursor = int(after)
    async with state.runtime.sessions() as session:
        events = (
            await session.scalars(
                select(AccountEvent)
                .where(AccountEvent.account_id == caller.account_id, AccountEvent.seq > cursor)
                .order_by(AccountEvent.seq)
                .limit(limit)
            )
        ).all()
    return {
        "data": [
            {
                "id": str(e.seq),
                "type": e.type,
                "sandbox": e.sandbox,
                "occurred_at": e.occurred_at.isoformat(),
                "data": e.data,
            }
            for e in events
        ],
        "next": str(events[-1].seq) if events else (after or "0"),
    }
