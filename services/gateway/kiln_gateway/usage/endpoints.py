"""Usage, statistics and the account's event feed, all from the gateway's read model."""

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from kiln_gateway.deps import CallerDep, StateDep
from kiln_gateway.errors import ValidationFailed
from kiln_gateway.query_dates import IsoDate
from kiln_gateway.usage import repository
from kiln_gateway.usage.schemas import counts_by_status, event_json, stats_entries
from kiln_gateway.usage.service import period_start, stats_range
from kiln_runtime.money import format_credits

router = APIRouter(tags=["usage"])


@router.get("/usage")
async def usage(caller: CallerDep, state: StateDep) -> dict[str, Any]:
    """Balance, reserved credits, what this month cost, and job counts by status (live and
    sandbox apart)."""
    now = datetime.now(UTC)
    start = period_start(now)
    async with state.runtime.sessions() as session:
        balance = await repository.balance_of(session, caller.account_id)
        spent = await repository.live_spend_since(session, caller.account_id, start)
        counts = await repository.job_counts(session, caller.account_id)
    return {
        "data": {
            "balance": format_credits(balance.available_millicredits if balance else 0),
            "reserved": format_credits(balance.reserved_millicredits if balance else 0),
            "period_start": start.isoformat().replace("+00:00", "Z"),
            "spent_this_period": format_credits(spent),
            "jobs": counts_by_status(counts),
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
    span = stats_range(start, end, datetime.now(UTC).date())
    async with state.runtime.sessions() as session:
        rows = await repository.job_stats(
            session, caller.account_id, group_by, span.lower, span.upper
        )
    return {
        "data": stats_entries(rows),
        "group_by": group_by,
        "start": span.first.isoformat(),
        "end": span.last.isoformat(),
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
        events = await repository.account_events_after(session, caller.account_id, cursor, limit)
    return {
        "data": [event_json(e) for e in events],
        "next": str(events[-1].seq) if events else (after or "0"),
    }
