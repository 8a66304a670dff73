"""The gateway's read model: jobs and balances as the pipeline's events report them."""

import base64
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.ext.asyncio import AsyncSession

from kiln_contracts import Event
from kiln_contracts.v1 import common_pb2, credits_pb2, jobs_pb2
from kiln_gateway.models import Balance, Grant, Job
from kiln_gateway.service import next_status
from kiln_gateway.timeline import record_account_event
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
