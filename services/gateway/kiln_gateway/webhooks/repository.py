"""All SQL of webhooks: account endpoints, the delivery log (the gateway's read model of the
notifier's `webhook.attempted` events), and the requests to the notifier (outbox rows)."""

import time
from collections.abc import Callable, Sequence

from google.protobuf.message import Message
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.exc import StaleDataError

from kiln_contracts.v1 import webhooks_pb2
from kiln_gateway.errors import Conflict
from kiln_gateway.pagination import PageRequest, fetch_page
from kiln_gateway.tables import (
    MESSAGING,
    WebhookAttemptRecord,
    WebhookDeliveryRecord,
    WebhookEndpoint,
)
from kiln_gateway.webhooks.service import endpoint_changed
from kiln_runtime.db import SessionFactory, transaction
from kiln_runtime.outbox import Outbox

# Tries of a change that another change of the same endpoint overtook (SQLite only).
CHANGE_TRIES = 5


async def emit(
    session: AsyncSession, topic: str, message: Message, account_id: str, job_id: str = ""
) -> None:
    """One event for the notifier, in `session`'s transaction."""
    outbox = Outbox()
    outbox.emit(topic, message, account_id=account_id, job_id=job_id)
    await outbox.write(session, MESSAGING)


# ------------------------------------------------------------------------- endpoints


async def account_endpoint(
    session: AsyncSession, account_id: str, endpoint_id: str, *, for_update: bool = False
) -> WebhookEndpoint | None:
    """The account's endpoint, unless deleted; another account's is None like a missing one.
    `for_update`: its row locked until the transaction ends (PostgreSQL), for a change made
    from what was read (the consumer may disable the endpoint meanwhile)."""
    endpoint = await session.get(WebhookEndpoint, endpoint_id, with_for_update=for_update)
    if endpoint is None or endpoint.account_id != account_id or endpoint.deleted_at is not None:
        return None
    return endpoint


async def list_endpoints(
    session: AsyncSession, account_id: str, page: PageRequest
) -> tuple[Sequence[WebhookEndpoint], int]:
    query = (
        select(WebhookEndpoint)
        .where(WebhookEndpoint.account_id == account_id, WebhookEndpoint.deleted_at.is_(None))
        .order_by(WebhookEndpoint.created_at.desc(), WebhookEndpoint.id)
    )
    return await fetch_page(session, query, page)


async def change_endpoint(
    sessions: SessionFactory,
    account_id: str,
    endpoint_id: str,
    change: Callable[[WebhookEndpoint], None],
    *,
    deleted: bool = False,
) -> WebhookEndpoint | None:
    """Apply `change` to the account's endpoint and announce it, in a transaction of its own;
    None when there is no such endpoint.

    When another change of the endpoint committed between this one's read and its write
    (possible on SQLite, which has no row lock), the change is made again on the row as it
    now is, as PostgreSQL's row lock would have it: the later change wins field by field, and
    the notifier hears each state under a revision of its own."""
    for _ in range(CHANGE_TRIES):
        try:
            async with transaction(sessions) as session:
                endpoint = await account_endpoint(session, account_id, endpoint_id, for_update=True)
                if endpoint is None:
                    return None
                change(endpoint)
                await save_endpoint(session, endpoint, deleted=deleted)
            return endpoint
        except StaleDataError:
            continue
    raise Conflict("The endpoint kept changing while this request ran; send the request again.")


async def save_endpoint(
    session: AsyncSession, endpoint: WebhookEndpoint, *, deleted: bool = False
) -> None:
    """Add or update `endpoint` and tell the notifier, in `session`'s transaction, under the
    next revision (the row is locked for a change: `account_endpoint(for_update=True)`).

    A revision is above the last one and at least the clock in milliseconds: it keeps rising
    after the gateway's database is restored from a backup (or its migration 0006 is taken
    down and up again), where a plain count would start again below what the notifier holds
    and every later change would be ignored there."""
    endpoint.revision = max((endpoint.revision or 0) + 1, int(time.time() * 1000))
    session.add(endpoint)
    await emit(
        session,
        "webhooks.endpoint_changed",
        endpoint_changed(endpoint, deleted=deleted),
        endpoint.account_id,
    )


# ------------------------------------------------------------------------- deliveries


async def account_delivery(
    session: AsyncSession, account_id: str, delivery_id: str
) -> WebhookDeliveryRecord | None:
    delivery = await session.get(WebhookDeliveryRecord, delivery_id)
    if delivery is None or delivery.account_id != account_id:
        return None
    return delivery


async def list_deliveries(
    session: AsyncSession,
    account_id: str,
    page: PageRequest,
    *,
    job_id: str | None,
    endpoint_id: str | None,
    status: str | None,
) -> tuple[Sequence[WebhookDeliveryRecord], int]:
    """A page of the delivery log, newest first. `endpoint_id` "" names jobs' own URLs."""
    query = select(WebhookDeliveryRecord).where(WebhookDeliveryRecord.account_id == account_id)
    if job_id is not None:
        query = query.where(WebhookDeliveryRecord.job_id == job_id)
    if endpoint_id is not None:
        query = query.where(WebhookDeliveryRecord.endpoint_id == endpoint_id)
    if status is not None:
        query = query.where(WebhookDeliveryRecord.status == status)
    query = query.order_by(WebhookDeliveryRecord.created_at.desc(), WebhookDeliveryRecord.id)
    return await fetch_page(session, query, page)


async def attempts_of(
    session: AsyncSession, delivery_ids: list[str]
) -> dict[str, list[WebhookAttemptRecord]]:
    """Every attempt of each delivery, by delivery id (an empty list for none)."""
    attempts: dict[str, list[WebhookAttemptRecord]] = {d: [] for d in delivery_ids}
    if delivery_ids:
        for attempt in (
            await session.scalars(
                select(WebhookAttemptRecord).where(
                    WebhookAttemptRecord.delivery_id.in_(delivery_ids)
                )
            )
        ).all():
            attempts[attempt.delivery_id].append(attempt)
    return attempts


async def request_redelivery(session: AsyncSession, delivery: WebhookDeliveryRecord) -> None:
    await emit(
        session,
        "webhook.redelivery_requested",
        webhooks_pb2.WebhookRedeliveryRequested(delivery_id=delivery.id),
        delivery.account_id,
        delivery.job_id,
    )


async def request_test_event(
    session: AsyncSession, endpoint: WebhookEndpoint, test_id: str
) -> None:
    await emit(
        session,
        "webhook.test_requested",
        webhooks_pb2.WebhookTestRequested(endpoint_id=endpoint.id, test_id=test_id),
        endpoint.account_id,
    )
