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
    TEST_TYPE,
    WEBHOOK_TYPES,
    DeliveryTarget,
    delivery_targets,
    job_spec,
    payload_for_event,
    payload_for_test_event,
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


async def handle_redelivery_requested(
    session: AsyncSession, event: Event, tables: NotifierTables, now: datetime
) -> repository.Redelivery | None:
    """Send a delivery again with the same body and `webhook-id` (the gateway checked that the
    account owns it; so do we). Unknown ids change nothing."""
    message = event.message
    if not isinstance(message, webhooks_pb2.WebhookRedeliveryRequested):
        raise TypeError(f"expected WebhookRedeliveryRequested, got {type(message).__name__}")
    return await repository.request_redelivery(
        session, tables, account_id=event.account_id, delivery_id=message.delivery_id, now=now
    )


async def handle_test_requested(
    session: AsyncSession, event: Event, tables: NotifierTables, now: datetime
) -> list[str]:
    """A `webhook.test` delivery to one live endpoint of the account, `webhook-id` = test id."""
    message = event.message
    if not isinstance(message, webhooks_pb2.WebhookTestRequested):
        raise TypeError(f"expected WebhookTestRequested, got {type(message).__name__}")
    url = await repository.endpoint_for_test(
        session, tables, account_id=event.account_id, endpoint_id=message.endpoint_id
    )
    if not url:
        log.info("test event for unknown endpoint %s: nothing sent", message.endpoint_id)
        return []
    return await repository.add_deliveries(
        session,
        tables,
        webhook_id=message.test_id or event.event_id,
        account_id=event.account_id,
        job_id="",
        event_type=TEST_TYPE,
        payload=payload_for_test_event(message.endpoint_id, message.test_id, now),
        targets=[DeliveryTarget(endpoint_id=message.endpoint_id, url=url)],
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

    async def on_redelivery(session: AsyncSession, event: Event, outbox: Outbox) -> None:
        redelivery = await handle_redelivery_requested(session, event, tables, clock())
        if redelivery is not None:
            log.info("delivery %s: redelivery requested", redelivery.delivery_id)

    async def on_test(session: AsyncSession, event: Event, outbox: Outbox) -> None:
        await handle_test_requested(session, event, tables, clock())

    handlers: dict[str, Handler] = {
        "webhooks.endpoint_changed": on_endpoint_changed,
        "webhook.redelivery_requested": on_redelivery,
        "webhook.test_requested": on_test,
    }
    for event_type in WEBHOOK_TYPES:
        handlers[event_type] = on_job_finished
    return handlers
