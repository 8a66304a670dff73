"""API shapes of usage: job counts by status, statistics entries, and feed events."""

from collections.abc import Iterable, Sequence
from typing import Any

from kiln_gateway.tables import AccountEvent
from kiln_runtime.money import format_credits


def counts_by_status(rows: Iterable[Sequence[Any]]) -> dict[str, dict[str, int]]:
    """Job counts by status, live and sandbox apart, from (sandbox, status, count) rows."""
    by_status: dict[str, dict[str, int]] = {"live": {}, "sandbox": {}}
    for sandbox, status, count in rows:
        by_status["sandbox" if sandbox else "live"][status] = int(count)
    return by_status


def stats_entries(rows: Iterable[Sequence[Any]]) -> list[dict[str, Any]]:
    """One entry per key (day or model), each with its live and sandbox figures."""
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
    return list(grouped.values())


def event_json(event: AccountEvent) -> dict[str, Any]:
    return {
        "id": str(event.seq),
        "type": event.type,
        "sandbox": event.sandbox,
        "occurred_at": event.occurred_at.isoformat(),
        "data": event.data,
    }
