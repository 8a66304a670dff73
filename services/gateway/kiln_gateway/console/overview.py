"""The account holder's overview: balance, reserved credits, this period's spend, job counts,
and the last 30 days per day (spend and jobs, live and sandbox apart)."""

from datetime import UTC, datetime

from fastapi import APIRouter, Request
from starlette.responses import Response

from kiln_gateway.console.auth import CurrentAccount
from kiln_gateway.console.charts import chart_json, daily_series
from kiln_gateway.console.pages import render
from kiln_gateway.deps import StateDep
from kiln_gateway.usage import repository as usage
from kiln_gateway.usage.schemas import counts_by_status
from kiln_gateway.usage.service import period_start, stats_range

router = APIRouter(include_in_schema=False)


@router.get("/console/")
async def overview(request: Request, user: CurrentAccount, state: StateDep) -> Response:
    now = datetime.now(UTC)
    start = period_start(now)
    span = stats_range(None, None, now.date())
    async with state.runtime.sessions() as session:
        balance = await usage.balance_of(session, user.account_id)
        spent = await usage.live_spend_since(session, user.account_id, start)
        counts = counts_by_status(await usage.job_counts(session, user.account_id))
        rows = await usage.job_stats(session, user.account_id, "day", span.lower, span.upper)
    days = daily_series(rows, span.first, span.last)
    return render(
        request,
        "overview.html",
        {
            "user": user,
            "nav": "overview",
            "available": balance.available_millicredits if balance else 0,
            "reserved": balance.reserved_millicredits if balance else 0,
            "spent": spent,
            "period_start": start,
            "counts": counts,
            "days": days,
            "chart": chart_json(days),
            "first": span.first,
            "last": span.last,
        },
    )
