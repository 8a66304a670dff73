"""Listing and counting an account's jobs: filters and sort order, validated."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select

from kiln_gateway.errors import ValidationFailed
from kiln_gateway.models import Job
from kiln_gateway.service import STATUS_RANK

SORTABLE = {
    "created_at": Job.created_at,
    "started_at": Job.started_at,
    "completed_at": Job.completed_at,
    "status": Job.status,
    "model": Job.model,
}


@dataclass(frozen=True)
class JobFilters:
    status: list[str] | None = None
    model: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None

    @classmethod
    def parse(
        cls,
        status: str | None,
        model: str | None,
        created_after: datetime | None,
        created_before: datetime | None,
    ) -> "JobFilters":
        statuses = None
        if status is not None:
            statuses = [s.strip() for s in status.split(",") if s.strip()]
            unknown = [s for s in statuses if s not in STATUS_RANK]
            if unknown or not statuses:
                raise ValidationFailed(
                    "Unknown job status.",
                    [{"field": "status", "message": f"one or more of {', '.join(STATUS_RANK)}"}],
                )
        return cls(statuses, model, created_after, created_before)

    def apply(self, query: Select[Any], account_id: str) -> Select[Any]:
        query = query.where(Job.account_id == account_id)
        if self.status:
            query = query.where(Job.status.in_(self.status))
        if self.model:
            query = query.where(Job.model == self.model)
        if self.created_after:
            query = query.where(Job.created_at > self.created_after)
        if self.created_before:
            query = query.where(Job.created_at < self.created_before)
        return query


def order_by(sort: str) -> list[Any]:
    descending = sort.startswith("-")
    name = sort.removeprefix("-")
    column = SORTABLE.get(name)
    if column is None:
        raise ValidationFailed(
            "Unknown sort field.",
            [{"field": "sort", "message": f"one of {', '.join(SORTABLE)}, '-' for descending"}],
        )
    primary = column.desc().nulls_last() if descending else column.asc().nulls_last()
    return [primary, Job.id.desc() if descending else Job.id.asc()]


def count_query(filters: JobFilters, account_id: str) -> Select[Any]:
    return filters.apply(select(func.count()).select_from(Job), account_id)
