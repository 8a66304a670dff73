"""The gateway's read model: jobs and balances as the pipeline's events report them."""

import base64
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from kiln_contracts import Event
from kiln_contracts.v1 import common_pb2, credits_pb2, jobs_pb2, webhooks_pb2
from kiln_gateway.jobs.repository import record_account_event
from kiln_gateway.jobs.service import next_status
from kiln_gateway.tables import (
    Balance,
    Grant,
    Job,
    WebhookAttemptRecord,
    WebhookDeliveryRecord,
    WebhookEndpoint,
)
from kiln_runtime.consuming import Handler
from kiln_runtime.outbox import Outbox


def _when(ts: Timestamp, fallback: datetime) -> datetime:
    if ts.seconds == 0 and ts.nanos == 0:
        return fallback
    return ts.ToDatetime(tzinfo=UTC)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def _record_balance(
    session: AsyncSession, account_id: str, balance: common_pb2.Balance, as_of: datetime
) -> None:
    row = await session.get(Balance, account_id)
    if row is None:
        row = Balance(account_id=account_id, as_of=as_of)
        session.add(row)
    elif row.as_of.replace(tzinfo=row.as_of.tzinfo or UTC) > as_of:
        return  # an older announcement arriving late
    row.available_millicredits = balance.available_millicredits
    row.reserved_millicredits = balance.reserved_millicredits
    row.as_of = as_of


async def on_event(session: AsyncSession, event: Event, outbox: Outbox) -> None:
    occurred = event.envelope.occurred_at.ToDatetime(tzinfo=UTC)
    message = event.message
    balance = getattr(message, "balance", None)
    if isinstance(balance, common_pb2.Balance) and event.type.startswith("credits."):
        await _record_balance(session, event.account_id, balance, occurred)
    if isinstance(message, credits_pb2.CreditsApplied):
        grant = await session.get(Grant, message.grant_id)
        if grant is not None:
            grant.booked_millicredits = message.amount_millicredits
        return
    if not event.job_id:
        return
    job = await session.get(Job, event.job_id)
    if job is None or job.account_id != event.account_id:
        return
    before = (job.status, job.progress, job.queue_position, job.queue_reason)
    target = next_status(job.status, event.type)
    if target is not None:
        job.status = target
    if isinstance(message, credits_pb2.CreditsReserved):
        job.cost_millicredits = message.amount_millicredits
    elif isinstance(message, credits_pb2.CreditsRejected):
        if target == "failed":
            job.cost_millicredits = 0
            job.error_code = "INSUFFICIENT_CREDITS"
            job.error_message = "Not enough credits for this job."
            job.completed_at = occurred
    elif isinstance(message, jobs_pb2.JobQueued):
        if job.status == "queued":
            job.queue_position = message.queue_position
            job.queue_reason = message.queue_reason or None
            job.estimated_start_at = (
                _when(message.estimated_start_at, occurred)
                if message.HasField("estimated_start_at")
                else None
            )
    elif isinstance(message, jobs_pb2.JobStarted):
        if target == "running":
            job.started_at = _when(message.started_at, occurred)
            job.queue_position = None
    elif isinstance(message, jobs_pb2.JobProgress):
        if job.status == "running":
            job.progress = max(job.progress, min(max(message.progress, 0.0), 1.0))
    elif isinstance(message, jobs_pb2.JobCompleted):
        if target == "completed":
            result = message.result
            job.started_at = job.started_at or _when(message.started_at, occurred)
            job.completed_at = _when(message.completed_at, occurred)
            job.progress = 1.0
            job.queue_position = None
            job.cost_millicredits = message.price_millicredits
            job.result = {
                "blob_key": result.blob_key,
                "content_type": result.content_type,
                "size_bytes": result.size_bytes,
                "encryption": {
                    "scheme": result.encryption.scheme,
                    "key_id": result.encryption.key_id,
                    "salt": _b64(result.encryption.salt),
                    "sealed_key": _b64(result.encryption.sealed_key),
                    "chunk_size": result.encryption.chunk_size,
                },
            }
    elif isinstance(message, jobs_pb2.JobFailed):
        if target == "failed":
            job.completed_at = _when(message.failed_at, occurred)
            job.cost_millicredits = 0
            job.queue_position = None
            job.error_code = message.error_code or "INFERENCE_ERROR"
            job.error_message = message.error_message
    elif isinstance(message, jobs_pb2.JobCanceled) and target == "canceled":
        job.completed_at = _when(message.canceled_at, occurred)
        job.cost_millicredits = 0
        job.queue_position = None
    after = (job.status, job.progress, job.queue_position, job.queue_reason)
    if after != before or event.type in LEDGER_EVENTS:
        record_account_event(session, job, event.type, occurred)


LEDGER_EVENTS = frozenset({"credits.captured", "credits.released"})


READ_MODEL_TOPICS = (
    "credits.applied",
    "credits.reserved",
    "credits.rejected",
    "credits.captured",
    "credits.released",
    "job.queued",
    "job.dispatched",
    "job.started",
    "job.progress",
    "job.completed",
    "job.failed",
    "job.canceled",
)

HANDLERS: dict[str, Handler] = {topic: on_event for topic in READ_MODEL_TOPICS}


# ---------------------------------------------------------------------------------------------
# The webhook delivery log (issue 6): built from the notifier's events, never its tables.


async def on_webhook_attempted(session: AsyncSession, event: Event, outbox: Outbox) -> None:
    """One attempt: its row in the log, and the delivery's current state. A 410 that ended a
    delivery to an account endpoint marks the endpoint disabled (an update re-enables it)."""
    message = event.message
    if not isinstance(message, webhooks_pb2.WebhookAttempted):
        return
    occurred = event.envelope.occurred_at.ToDatetime(tzinfo=UTC)
    attempted_at = _when(message.attempted_at, occurred)
    next_at = (
        message.next_attempt_at.ToDatetime(tzinfo=UTC)
        if message.HasField("next_attempt_at")
        else None
    )
    delivery = await session.get(WebhookDeliveryRecord, message.delivery_id)
    if delivery is None:
        delivery = WebhookDeliveryRecord(
            id=message.delivery_id,
            account_id=event.account_id,
            webhook_id=message.webhook_id,
            endpoint_id=message.endpoint_id,
            url=message.url,
            event_type=message.event_type,
            job_id=message.job_id,
            status=message.outcome,
            attempts=0,
            created_at=attempted_at,
            updated_at=attempted_at,
        )
        session.add(delivery)
    elif delivery.account_id != event.account_id:
        return
    known = await session.scalar(
        select(WebhookAttemptRecord.id).where(
            WebhookAttemptRecord.delivery_id == message.delivery_id,
            WebhookAttemptRecord.attempt == message.attempt,
        )
    )
    if known is not None:
        return
    session.add(
        WebhookAttemptRecord(
            delivery_id=message.delivery_id,
            account_id=event.account_id,
            attempt=message.attempt,
            attempted_at=attempted_at,
            status_code=message.status_code or None,
            latency_ms=message.latency_ms,
            error=message.error or None,
            outcome=message.outcome,
            next_attempt_at=next_at,
        )
    )
    if message.attempt >= delivery.attempts:
        delivery.attempts = message.attempt
        delivery.status = message.outcome
        delivery.last_status_code = message.status_code or None
        delivery.last_error = message.error or None
        delivery.next_attempt_at = next_at
        delivery.updated_at = attempted_at
    if message.status_code == 410 and message.outcome == "failed" and message.endpoint_id:
        endpoint = await session.get(WebhookEndpoint, message.endpoint_id)
        if endpoint is not None and endpoint.account_id == event.account_id:
            if (
                endpoint.disabled_at is None
                and endpoint.updated_at.replace(tzinfo=endpoint.updated_at.tzinfo or UTC)
                <= attempted_at
            ):
                endpoint.disabled_at = attempted_at


async def on_webhook_finished(session: AsyncSession, event: Event, outbox: Outbox) -> None:
    """webhook.delivered / webhook.failed: the delivery's final status (webhook.attempted of
    the same attempt says the same; this covers a log row made before it)."""
    message = event.message
    if not isinstance(message, webhooks_pb2.WebhookDelivered | webhooks_pb2.WebhookFailed):
        return
    delivery = await session.get(WebhookDeliveryRecord, message.delivery_id)
    if delivery is None or delivery.account_id != event.account_id:
        return
    attempt = (
        message.attempt if isinstance(message, webhooks_pb2.WebhookDelivered) else message.attempts
    )
    if attempt >= delivery.attempts:
        delivery.status = (
            "delivered" if isinstance(message, webhooks_pb2.WebhookDelivered) else "failed"
        )
        delivery.next_attempt_at = None


HANDLERS.update(
    {
        "webhook.attempted": on_webhook_attempted,
        "webhook.delivered": on_webhook_finished,
        "webhook.failed": on_webhook_finished,
    }
)
