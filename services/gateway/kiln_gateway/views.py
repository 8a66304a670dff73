"""Rendering the gateway's rows for the API."""

from datetime import UTC, datetime
from typing import Any

from kiln_gateway.models import Account, ApiKey, Job
from kiln_runtime.job_object import FileLinks, JobView, ResultView, render_job


def job_view(job: Job) -> JobView:
    result = None
    if job.result is not None:
        result = ResultView(
            blob_key=job.result["blob_key"],
            content_type=job.result["content_type"],
            size_bytes=int(job.result["size_bytes"]),
            encryption=job.result["encryption"],
        )
    return JobView(
        id=job.id,
        model=job.model,
        status=job.status,
        input=job.input,
        metadata=job.job_metadata,
        sandbox=job.sandbox,
        created_at=job.created_at,
        started_at=job.started_at,
        completed_at=job.completed_at,
        queue_position=job.queue_position,
        progress=job.progress,
        cost_millicredits=job.cost_millicredits,
        result=result,
        error_code=job.error_code,
        error_message=job.error_message,
        webhook_url=job.webhook_url,
        estimated_start_at=job.estimated_start_at,
        queue_reason=job.queue_reason,
    )


def job_json(job: Job, links: FileLinks) -> dict[str, Any]:
    return render_job(job_view(job), links)


def iso_utc(value: datetime | None) -> str | None:
    """ISO 8601 in UTC (`…Z`); SQLite hands timestamps back without their zone."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def account_json(account: Account) -> dict[str, Any]:
    return {
        "id": account.id,
        "email": account.email,
        "name": account.name,
        "suspended": account.suspended,
        "created_at": iso_utc(account.created_at),
    }


def key_json(key: ApiKey, secret: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "kind": "sandbox" if key.sandbox else "live",
        "sandbox": key.sandbox,
        "created_at": iso_utc(key.created_at),
        "last_used_at": iso_utc(key.last_used_at),
        "revoked_at": iso_utc(key.revoked_at),
    }
    if secret is not None:
        body["secret"] = secret
    return body
