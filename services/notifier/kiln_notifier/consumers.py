"""Event handlers. Each runs inside the EventProcessor's transaction (inbox row, this change and
any outbox rows commit together), so a redelivered event changes nothing twice."""

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from kiln_contracts import Event
from kiln_contracts.v1 import webhooks_pb2
from kiln_notifier import repository
from kiln_notifier.models import NotifierTables
from kiln_notifier.service import (
    WEBHOOK_TYPES,
    delivery_targets,
    job_spec,
    payload_for_event,
    webhook_type,
)
from kiln_runtime.consuming import Handler
from kiln_runtime.job_object import FileLinks
from kiln_runtime.outbox import Outbox

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


async def handle_endpoint_changed(
    session: AsyncSession, event: Event, tables: NotifierTables
) -> None:
    message = event.message
    if not isinstance(message, webhooks_pb2.WebhookEndpointChanged):
        raise TypeError(f"expected WebhookEndpointChanged, got {type(message).__name__}")
    await repository.upsert_endpoint(
        session,
        tables,
        repository.EndpointChange(
            endpoint_id=message.endpoint_id,
            account_id=event.account_id,
            url=message.url,
            secret=message.secret,
            event_types=list(message.event_types),
            is_default=message.is_default,
            deleted=message.deleted,
            changed_at=event.envelope.occurred_at.ToDatetime(tzinfo=UTC),
        ),
    )


async def handle_job_finished(
    session: AsyncSession, event: Event, tables: NotifierTables, links: FileLinks, now: datetime
) -> list[str]:
    """job.completed / job.failed / job.canceled / credits.rejected: one pending delivery per
    target (the job's webhook_url, the matching account endpoints). Returns the delivery ids."""
    kind = webhook_type(event.type)
    spec = job_spec(event)
    endpoints = await repository.account_endpoints(session, tables, event.account_id)
    targets = delivery_targets(kind, spec.webhook_url, endpoints)
    if not targets:
        return []
    return await repository.add_deliveries(
        session,
        tables,
        webhook_id=event.event_id,
        account_id=event.account_id,
        job_id=event.job_id,
        event_type=kind,
        payload=payload_for_event(event, links, now=now),
        targets=targets,
        trace_id=event.envelope.trace_id,
        now=now,
    )


def make_handlers(
    tables: NotifierTables, links: FileLinks, clock: Clock = _utcnow
) -> dict[str, Handler]:
    """The consumed topics and their handlers, in the shape EventProcessor takes."""

    async def on_endpoint_changed(session: AsyncSession, event: Event, outbox: Outbox) -> None:
        await handle_endpoint_changed(session, event, tables)

    async def on_job_finished(session: AsyncSession, event: Event, outbox: Outbox) -> None:
        created = await handle_job_finished(session, event, tables, links, clock())
        if created:
            log.info("job %s: %d webhook deliveries queued", event.job_id, len(created))

    handlers: dict[str, Handler] = {"webhooks.endpoint_changed": on_endpoint_changed}
    for event_type in WEBHOOK_TYPES:
        handlers[event_type] = on_job_finished
    return handlers
