"""The notifier's decisions, free of I/O: what a terminal job event says in a webhook, who gets
it, and what happens after an attempt (delivered, retry later, or give up)."""

import base64
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from kiln_contracts import Event
from kiln_contracts.v1 import common_pb2, credits_pb2, jobs_pb2
from kiln_notifier.tables import JOB_WEBHOOK_URL
from kiln_runtime.job_object import FileLinks, JobView, ResultView, render_job
from kiln_runtime.money import format_credits

log = logging.getLogger(__name__)

# Consumed event type -> the webhook type a receiver sees. A job refused for lack of credits
# ended as a failed job, so it is announced as one.
WEBHOOK_TYPES: dict[str, str] = {
    "job.completed": "job.completed",
    "job.failed": "job.failed",
    "job.canceled": "job.canceled",
    "credits.rejected": "job.failed",
}
INSUFFICIENT_CREDITS = "INSUFFICIENT_CREDITS"


class UnsupportedEvent(ValueError):
    """An event that is not a job's end (a wiring mistake, not bad input)."""


# ---------------------------------------------------------------------------------------------
# The job object of a terminal event


def iso(value: datetime) -> str:
    """UTC, `Z`-suffixed, like every timestamp of the public API."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _time(stamp: Timestamp, present: bool) -> datetime | None:
    return stamp.ToDatetime(tzinfo=UTC) if present else None


def _json_object(text: str, what: str, job_id: str) -> dict[str, Any] | None:
    """The client's JSON (validated by the gateway); None when empty or not an object."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        log.warning("job %s: %s is not JSON; sent as null", job_id, what)
        return None
    if not isinstance(value, dict):
        log.warning("job %s: %s is not a JSON object; sent as null", job_id, what)
        return None
    return value


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _result_view(result: jobs_pb2.JobResult) -> ResultView | None:
    if not result.blob_key:
        return None
    enc = result.encryption
    return ResultView(
        blob_key=result.blob_key,
        content_type=result.content_type,
        size_bytes=result.size_bytes,
        encryption={
            "scheme": enc.scheme,
            "key_id": enc.key_id,
            "salt": _b64(enc.salt),
            "sealed_key": _b64(enc.sealed_key),
            "chunk_size": enc.chunk_size,
        },
    )


def insufficient_credits_message(required_millicredits: int, available_millicredits: int) -> str:
    return (
        f"Not enough credits: this job costs {format_credits(required_millicredits)} credits "
        f"and {format_credits(max(available_millicredits, 0))} are available."
    )


def job_view_from_event(event: Event) -> JobView:
    """The finished job as the gateway would show it, from the terminal event alone.

    Credits: a completed job was charged its price; failed, canceled and refused jobs were
    charged nothing (their reservation, if any, was released).
    """
    message = event.message
    occurred_at = event.envelope.occurred_at.ToDatetime(tzinfo=UTC)
    started_at: datetime | None = None
    cost = 0
    result: ResultView | None = None
    error_code: str | None = None
    error_message: str | None = None
    progress = 0.0
    if isinstance(message, jobs_pb2.JobCompleted):
        status = "completed"
        spec = message.spec
        started_at = _time(message.started_at, message.HasField("started_at"))
        finished_at = _time(message.completed_at, message.HasField("completed_at"))
        cost = message.price_millicredits
        result = _result_view(message.result)
        progress = 1.0
    elif isinstance(message, jobs_pb2.JobFailed):
        status = "failed"
        spec = message.spec
        finished_at = _time(message.failed_at, message.HasField("failed_at"))
        error_code = message.error_code or "INTERNAL_ERROR"
        error_message = message.error_message or "The job failed."
    elif isinstance(message, jobs_pb2.JobCanceled):
        status = "canceled"
        spec = message.spec
        finished_at = _time(message.canceled_at, message.HasField("canceled_at"))
    elif isinstance(message, credits_pb2.CreditsRejected):
        status = "failed"
        spec = message.spec
        finished_at = None
        error_code = INSUFFICIENT_CREDITS
        error_message = insufficient_credits_message(
            message.required_millicredits, message.balance.available_millicredits
        )
    else:
        raise UnsupportedEvent(f"{event.type} events do not end a job")
    return JobView(
        id=event.job_id,
        model=spec.model,
        status=status,
        input=_json_object(spec.input_json, "input_json", event.job_id) or {},
        metadata=_json_object(spec.metadata_json, "metadata_json", event.job_id),
        sandbox=spec.sandbox,
        created_at=_time(spec.created_at, spec.HasField("created_at")) or occurred_at,
        started_at=started_at,
        completed_at=finished_at or occurred_at,
        progress=progress,
        cost_millicredits=cost,
        result=result,
        error_code=error_code,
        error_message=error_message,
        webhook_url=spec.webhook_url or None,
    )


def job_spec(event: Event) -> common_pb2.JobSpec:
    message = event.message
    if isinstance(
        message,
        jobs_pb2.JobCompleted
        | jobs_pb2.JobFailed
        | jobs_pb2.JobCanceled
        | credits_pb2.CreditsRejected,
    ):
        return message.spec
    raise UnsupportedEvent(f"{event.type} events do not end a job")


def webhook_type(event_type: str) -> str:
    try:
        return WEBHOOK_TYPES[event_type]
    except KeyError as exc:
        raise UnsupportedEvent(f"{event_type} events do not end a job") from exc


def webhook_payload(kind: str, timestamp: datetime, job: dict[str, Any]) -> dict[str, Any]:
    """The body of a delivery (docs/architecture.md, "Webhooks")."""
    return {"type": kind, "timestamp": iso(timestamp), "data": job}


def encode_payload(payload: dict[str, Any]) -> str:
    """The exact text that is signed and sent (and stored, so retries send the same bytes)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, sort_keys=False)


def payload_for_event(event: Event, links: FileLinks, now: datetime | None = None) -> str:
    """The webhook body announcing a terminal job event, timestamped with when it happened.

    The result URL in it is signed now and expires after `links.ttl_s`; retries resend the
    same body (same signature input as the first try), so a retry late in the schedule may
    carry an expired link: the receiver then fetches the job for a fresh one.
    """
    job = render_job(job_view_from_event(event), links, now=now)
    timestamp = event.envelope.occurred_at.ToDatetime(tzinfo=UTC)
    return encode_payload(webhook_payload(webhook_type(event.type), timestamp, job))


# ---------------------------------------------------------------------------------------------
# Who gets a delivery


@dataclass(frozen=True)
class EndpointRecord:
    endpoint_id: str
    url: str
    event_types: tuple[str, ...]
    is_default: bool = False
    deleted: bool = False


@dataclass(frozen=True)
class DeliveryTarget:
    endpoint_id: str  # JOB_WEBHOOK_URL for the job's own webhook_url
    url: str


def endpoint_accepts(event_types: Iterable[str], kind: str) -> bool:
    """An empty filter takes every type; `*` and `job.*` style wildcards are understood."""
    filters = list(event_types)
    if not filters:
        return True
    for wanted in filters:
        if wanted in ("*", kind):
            return True
        if wanted.endswith(".*") and kind.startswith(wanted[:-1]):
            return True
    return False


def delivery_targets(
    kind: str, webhook_url: str, endpoints: Iterable[EndpointRecord]
) -> list[DeliveryTarget]:
    """The job's own webhook_url (signed with the account's default secret) and every live
    account endpoint whose filter takes `kind`. Default-secret records are not endpoints."""
    targets: list[DeliveryTarget] = []
    if webhook_url:
        targets.append(DeliveryTarget(endpoint_id=JOB_WEBHOOK_URL, url=webhook_url))
    for endpoint in sorted(endpoints, key=lambda e: e.endpoint_id):
        if endpoint.deleted or endpoint.is_default or not endpoint.url:
            continue
        if endpoint_accepts(endpoint.event_types, kind):
            targets.append(DeliveryTarget(endpoint_id=endpoint.endpoint_id, url=endpoint.url))
    return targets


# ---------------------------------------------------------------------------------------------
# After an attempt


def next_attempt_delay(attempt: int, schedule: Sequence[float]) -> float | None:
    """Seconds to wait after failed attempt number `attempt` (1-based), or None to give up.

    The first attempt is immediate; `schedule[i]` is the wait before retry i + 1, so a delivery
    gets 1 + len(schedule) attempts in all.
    """
    if attempt < 1:
        raise ValueError("attempts are numbered from 1")
    if attempt > len(schedule):
        return None
    return float(schedule[attempt - 1])


def is_delivered(status_code: int | None) -> bool:
    return status_code is not None and 200 <= status_code < 300


class AttemptOutcome(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    GIVE_UP = "give_up"


@dataclass(frozen=True)
class AttemptDecision:
    outcome: AttemptOutcome
    next_attempt_at: datetime | None = None
    disable_endpoint: bool = False  # 410 Gone: the receiver asked for no more deliveries


GONE = 410
TOO_MANY_REQUESTS = 429


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds a `Retry-After` header asks to wait (delta-seconds or an HTTP date), or None
    when absent or unreadable."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(int(text))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - now).total_seconds(), 0.0)


def decide_after_attempt(
    attempt: int,
    status_code: int | None,
    schedule: Sequence[float],
    now: datetime,
    *,
    permanent: bool = False,
    retry_after_s: float | None = None,
    max_retry_after_s: float = 36000.0,
) -> AttemptDecision:
    """2xx: delivered. 410: given up at once, and the endpoint is disabled. Anything else
    (other status, timeout, refused URL, no connection) is retried on the schedule, unless the
    failure can never change (`permanent`, e.g. a URL that is not https) or the schedule is
    used up. A 429's Retry-After (capped) is waited out when it is longer than the schedule's
    delay; it does not add attempts."""
    if is_delivered(status_code):
        return AttemptDecision(AttemptOutcome.DELIVERED)
    if status_code == GONE:
        return AttemptDecision(AttemptOutcome.GIVE_UP, disable_endpoint=True)
    delay = None if permanent else next_attempt_delay(attempt, schedule)
    if delay is None:
        return AttemptDecision(AttemptOutcome.GIVE_UP)
    if status_code == TOO_MANY_REQUESTS and retry_after_s is not None:
        delay = max(delay, min(retry_after_s, max_retry_after_s))
    return AttemptDecision(AttemptOutcome.RETRY, next_attempt_at=now + timedelta(seconds=delay))


# ---------------------------------------------------------------------------------------------
# Terminal events of one job, and test events

TEST_TYPE = "webhook.test"


def payload_for_test_event(endpoint_id: str, test_id: str, now: datetime) -> str:
    """The body of `POST /api/v1/webhooks/{id}/test`: a `webhook.test` event."""
    return encode_payload(
        webhook_payload(
            TEST_TYPE,
            now,
            {"endpoint_id": endpoint_id, "test_id": test_id, "message": "A test event from Kiln."},
        )
    )
