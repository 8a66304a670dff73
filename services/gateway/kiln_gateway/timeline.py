"""The account's event feed behind `GET /events`: one row per change the gateway learned."""

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from kiln_gateway.models import AccountEvent, Job
from kiln_runtime.money import format_credits


def job_summary(job: Job) -> dict[str, Any]:
    error = {"code": job.error_code, "message": job.error_message} if job.error_code else None
    return {
        "job_id": job.id,
        "model": job.model,
        "status": job.status,
        "progress": job.progress,
        "queue_position": job.queue_position if job.status == "queued" else None,
        "cost": None if job.cost_millicredits is None else format_credits(job.cost_millicredits),
        "error": error,
    }


def record_account_event(
    session: AsyncSession,
    job: Job,
    event_type: str,
    occurred_at: datetime,
    extra: dict[str, Any] | None = None,
) -> None:
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
