"""The public job object (docs/architecture.md, "Job object"), rendered the same way by the
gateway (from its read model) and the notifier (from a job's terminal event)."""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from kiln_runtime.file_tokens import FileGrant, sign_file_token
from kiln_runtime.money import format_credits


@dataclass(frozen=True)
class ResultView:
    blob_key: str
    content_type: str
    size_bytes: int
    encryption: dict[str, Any]


@dataclass(frozen=True)
class JobView:
    id: str
    model: str
    status: str
    input: dict[str, Any]
    metadata: dict[str, Any] | None
    sandbox: bool
    created_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    queue_position: int | None = None
    progress: float = 0.0
    cost_millicredits: int | None = None
    result: ResultView | None = None
    error_code: str | None = None
    error_message: str | None = None
    webhook_url: str | None = None
    estimated_start_at: datetime | None = None
    queue_reason: str | None = None


@dataclass(frozen=True)
class FileLinks:
    public_url: str
    signing_key: str
    ttl_s: int


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def render_job(view: JobView, links: FileLinks, now: datetime | None = None) -> dict[str, Any]:
    result: dict[str, Any] | None = None
    if view.result is not None:
        expires_at = (now or datetime.now(UTC)) + timedelta(seconds=links.ttl_s)
        token = sign_file_token(
            FileGrant(view.result.blob_key, view.result.content_type, expires_at),
            links.signing_key,
        )
        result = {
            "url": f"{links.public_url.rstrip('/')}/api/v1/files/{token}",
            "expires_at": _iso(expires_at.replace(microsecond=0)),
            "content_type": view.result.content_type,
            "size_bytes": view.result.size_bytes,
            "encryption": view.result.encryption,
        }
    error = None
    if view.error_code is not None:
        error = {"code": view.error_code, "message": view.error_message or ""}
    return {
        "id": view.id,
        "model": view.model,
        "status": view.status,
        "input": view.input,
        "metadata": view.metadata,
        "sandbox": view.sandbox,
        "created_at": _iso(view.created_at),
        "started_at": _iso(view.started_at),
        "completed_at": _iso(view.completed_at),
        "queue_position": view.queue_position if view.status == "queued" else None,
        "estimated_start_at": _iso(view.estimated_start_at) if view.status == "queued" else None,
        "queue_reason": view.queue_reason if view.status == "queued" else None,
        "progress": view.progress,
        "cost": None if view.cost_millicredits is None else format_credits(view.cost_millicredits),
        "result": result,
        "error": error,
        "webhook_url": view.webhook_url,
    }
