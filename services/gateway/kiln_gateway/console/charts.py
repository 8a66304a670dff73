"""The overview's chart data: one entry per day of the range, days without jobs included, live
and sandbox apart (pure; the rows come from usage/repository.py)."""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any


@dataclass(frozen=True)
class DayFigures:
    day: str  # ISO date (UTC)
    live_jobs: int = 0
    live_failed: int = 0
    live_spent_millicredits: int = 0
    sandbox_jobs: int = 0
    sandbox_failed: int = 0


def daily_series(rows: Iterable[Sequence[Any]], first: date, last: date) -> list[DayFigures]:
    """From (day, sandbox, jobs, completed, failed, charged) rows, every day of [first, last]."""
    found: dict[str, dict[str, int]] = {}
    for key, sandbox, count, _completed, failed, charged in rows:
        figures = found.setdefault(str(key), {})
        if sandbox:
            figures["sandbox_jobs"] = int(count)
            figures["sandbox_failed"] = int(failed or 0)
        else:
            figures["live_jobs"] = int(count)
            figures["live_failed"] = int(failed or 0)
            figures["live_spent_millicredits"] = int(charged or 0)
    days = []
    day = first
    while day <= last:
        days.append(DayFigures(day.isoformat(), **found.get(day.isoformat(), {})))
        day += timedelta(days=1)
    return days


def chart_json(days: Sequence[DayFigures]) -> dict[str, list[Any]]:
    """What static/overview.js draws: columns, one value per day (spend in millicredits)."""
    return {
        "days": [d.day for d in days],
        "live_jobs": [d.live_jobs for d in days],
        "sandbox_jobs": [d.sandbox_jobs for d in days],
        "live_spent_millicredits": [d.live_spent_millicredits for d in days],
    }
