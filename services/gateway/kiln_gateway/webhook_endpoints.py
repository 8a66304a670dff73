"""Webhooks (`/api/v1/webhooks/...`), with an API key: account endpoints, the account's
default secret, the platform's `v1a` public key, the delivery log, redelivery and test events.

- An endpoint is a URL (checked by the URL guard), an optional event filter among
  `job.completed`, `job.failed`, `job.canceled` (empty: all of them) and a `whsec_` secret
  shown once, at creation. Every change is announced to the notifier
  (`webhooks.endpoint_changed`), which keeps its own copy; this service never reads the
  notifier's tables, nor the notifier this one's.
- The delivery log is the gateway's own read model of the notifier's `webhook.attempted`
  events (consumers.py): every attempt with its time, status code, latency and error.
- Redelivery and test events are requests to the notifier (`webhook.redelivery_requested`,
  `webhook.test_requested`): 202, and the attempt shows up in the log when it is made.
"""

import base64
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from kiln_contracts.v1 import webhooks_pb2
from kiln_gateway.deps import CallerDep, StateDep
from kiln_gateway.errors import NotFound, ValidationFailed, error_responses
from kiln_gateway.models import (
    MESSAGING,
    WebhookAttemptRecord,
    WebhookDeliveryRecord,
    WebhookEndpoint,
)
from kiln_gateway.schemas import Strict
from kiln_gateway.service import new_id, new_webhook_secret
from kiln_gateway.state import GatewayState
from kiln_gateway.views import iso_utc
from kiln_runtime.db import transaction
from kiln_runtime.outbox import Outbox
from kiln_runtime.url_guard import UnsafeUrl, resolve_public_addresses

router = APIRouter(prefix="/webhooks", tags=["webhooks"])

EventType = Literal["job.completed", "job.failed", "job.canceled"]
ENDPOINT_ID = Path(
    pattern=r"^we_[0-9a-f]{32}$", description="An endpoint id, `we_` + 32 hex digits."
)
DELIVERY_ID = Path(
    pattern=r"^dlv_[0-9a-f]{32}$", description="A delivery id, `dlv_` + 32 hex digits."
)


# ------------------------------------------------------------------------- request bodies


class EndpointCreate(Strict):
    url: str = Field(min_length=1, max_length=2048, description="https URL receiving webhooks.")
    event_types: list[EventType] = Field(
        default_factory=list,
        max_length=3,
        description="Event types to send; empty (the default) sends every type.",
    )
    description: str = Field(default="", max_length=500)


class EndpointUpdate(Strict):
    url: str | None = Field(default=None, min_length=1, max_length=2048)
    event_types: list[EventType] | None = Field(default=None, max_length=3)
    description: str | None = Field(default=None, max_length=500)


# ------------------------------------------------------------------------- response shapes


class EndpointData(BaseModel):
    id: str
    url: str
    event_types: list[str] = Field(description="Empty: every event type.")
    description: str
    status: Literal["enabled", "disabled"] = Field(
        description="`disabled` after the receiver answered 410 Gone; an update re-enables it."
    )
    created_at: str
    updated_at: str
    disabled_at: str | None


class NewEndpointData(EndpointData):
    secret: str = Field(description="The `whsec_` signing secret. Shown only in this response.")


class EndpointResponse(BaseModel):
    data: EndpointData


class NewEndpointResponse(BaseModel):
    data: NewEndpointData


class Pagination(BaseModel):
    page: int
    per_page: int
    total_pages: int
    total_results: int


class EndpointListResponse(BaseModel):
    data: list[EndpointData]
    pagination: Pagination


class SecretData(BaseModel):
    secret: str


class SecretResponse(BaseModel):
    data: SecretData


class PublicKeyData(BaseModel):
    algorithm: Literal["ed25519"]
    signature_version: Literal["v1a"]
    public_key: str = Field(description="The raw 32-byte Ed25519 public key, standard base64.")


class PublicKeyResponse(BaseModel):
    data: PublicKeyData


class AttemptData(BaseModel):
    attempt: int
    attempted_at: str
    status_code: int | None = Field(description="None when no HTTP answer came.")
    latency_ms: int
    error: str | None
    outcome: Literal["delivered", "retrying", "failed"]
    next_attempt_at: str | None


class DeliveryData(BaseModel):
    id: str
    webhook_id: str = Field(description="The `webhook-id` header: the same on every attempt.")
    endpoint_id: str | None = Field(description="None for a job's own `webhook_url`.")
    url: str
    event_type: str
    job_id: str | None
    status: Literal["retrying", "delivered", "failed"]
    attempts: list[AttemptData]
    next_attempt_at: str | None
    created_at: str
    updated_at: str


class DeliveryResponse(BaseModel):
    data: DeliveryData


class DeliveryListResponse(BaseModel):
    data: list[DeliveryData]
    pagination: Pagination


class RedeliveryData(BaseModel):
    delivery_id: str
    webhook_id: str
    status: Literal["requested"]


class RedeliveryResponse(BaseModel):
    data: RedeliveryData


class TestEventData(BaseModel):
    endpoint_id: str
    test_id: str = Field(description="The test event's `webhook-id`.")
    status: Literal["requested"]


class TestEventResponse(BaseModel):
    data: TestEventData


# ------------------------------------------------------------------------- helpers


def public_key_b64(private_key_text: str) -> str | None:
    """The Ed25519 public key (standard base64 of 32 bytes) of the configured private key."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    text = private_key_text.strip().replace("-", "+").replace("_", "/")
    if not text:
        return None
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        key = Ed25519PrivateKey.from_private_bytes(raw)
    except ValueError:
        return None
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(public).decode("ascii")


def endpoint_json(endpoint: WebhookEndpoint, secret: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": endpoint.id,
        "url": endpoint.url,
        "event_types": list(endpoint.event_types or []),
        "description": endpoint.description,
        "status": "disabled" if endpoint.disabled_at is not None else "enabled",
        "created_at": iso_utc(endpoint.created_at),
        "updated_at": iso_utc(endpoint.updated_at),
        "disabled_at": iso_utc(endpoint.disabled_at),
    }
    if secret is not None:
        data["secret"] = secret
    return data


def delivery_json(
    delivery: WebhookDeliveryRecord, attempts: list[WebhookAttemptRecord]
) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "webhook_id": delivery.webhook_id,
        "endpoint_id": delivery.endpoint_id or None,
        "url": delivery.url,
        "event_type": delivery.event_type,
        "job_id": delivery.job_id or None,
        "status": delivery.status,
        "attempts": [
            {
                "attempt": a.attempt,
                "attempted_at": iso_utc(a.attempted_at),
                "status_code": a.status_code,
                "latency_ms": a.latency_ms,
                "error": a.error,
                "outcome": a.outcome,
                "next_attempt_at": iso_utc(a.next_attempt_at),
            }
            for a in sorted(attempts, key=lambda a: a.attempt)
        ],
        "next_attempt_at": iso_utc(delivery.next_attempt_at),
        "created_at": iso_utc(delivery.created_at),
        "updated_at": iso_utc(delivery.updated_at),
    }


def _pagination(page: int, per_page: int, total: int) -> dict[str, int]:
    return {
        "page": page,
        "per_page": per_page,
        "total_pages": (total + per_page - 1) // per_page,
        "total_results": total,
    }


async def _checked_url(state: GatewayState, url: str) -> str:
    try:
        await resolve_public_addresses(url, allow_loopback=state.settings.allow_loopback_urls)
    except UnsafeUrl as exc:
        raise ValidationFailed(
            "The request has invalid fields.", [{"field": "url", "message": str(exc)}]
        ) from exc
    return url


def _unique(event_types: list[str]) -> list[str]:
    return sorted(set(event_types))


def _announce(outbox: Outbox, endpoint: WebhookEndpoint, *, deleted: bool = False) -> None:
    outbox.emit(
        "webhooks.endpoint_changed",
        webhooks_pb2.WebhookEndpointChanged(
            endpoint_id=endpoint.id,
            url=endpoint.url,
            secret=endpoint.secret,
            event_types=list(endpoint.event_types or []),
            deleted=deleted,
        ),
        account_id=endpoint.account_id,
    )


async def _own_endpoint(
    session: AsyncSession, account_id: str, endpoint_id: str
) -> WebhookEndpoint:
    endpoint = await session.get(WebhookEndpoint, endpoint_id)
    if endpoint is None or endpoint.account_id != account_id or endpoint.deleted_at is not None:
        raise NotFound("No such webhook endpoint.")
    return endpoint


# ------------------------------------------------------------------------- fixed routes


@router.get("/default-secret", response_model=SecretResponse)
async def default_secret(caller: CallerDep) -> dict[str, Any]:
    """The secret that signs deliveries to a job's own `webhook_url`."""
    return {"data": {"secret": caller.account.default_webhook_secret}}


@router.get("/public-key", response_model=PublicKeyResponse, responses=error_responses(404))
async def public_key(caller: CallerDep, state: StateDep) -> dict[str, Any]:
    """The platform's Ed25519 public key: every delivery's `webhook-signature` also carries a
    `v1a,<base64 signature>` of `{webhook-id}.{webhook-timestamp}.{body}` under its private
    half. 404 when the operator configured no signing key (then deliveries carry `v1` only)."""
    key = public_key_b64(state.settings.webhook_signing_key)
    if key is None:
        raise NotFound("This deployment has no webhook signing key (v1a signatures are off).")
    return {"data": {"algorithm": "ed25519", "signature_version": "v1a", "public_key": key}}


@router.get("/deliveries", response_model=DeliveryListResponse)
async def list_deliveries(
    caller: CallerDep,
    state: StateDep,
    page: int = Query(default=1, ge=1, le=100_000),
    per_page: int = Query(default=25, ge=1, le=100),
    job_id: str | None = Query(default=None, max_length=64),
    endpoint_id: str | None = Query(default=None, max_length=64),
    status: Literal["retrying", "delivered", "failed"] | None = Query(default=None),
) -> dict[str, Any]:
    """The delivery log, newest first: every delivery with every attempt (time, status code,
    latency, error). Filter by `job_id`, `endpoint_id` (`default` for jobs' own
    `webhook_url`s) or `status`."""
    where = [WebhookDeliveryRecord.account_id == caller.account_id]
    if job_id is not None:
        where.append(WebhookDeliveryRecord.job_id == job_id)
    if endpoint_id is not None:
        where.append(
            WebhookDeliveryRecord.endpoint_id == ("" if endpoint_id == "default" else endpoint_id)
        )
    if status is not None:
        where.append(WebhookDeliveryRecord.status == status)
    async with state.runtime.sessions() as session:
        total = int(
            await session.scalar(
                select(func.count()).select_from(WebhookDeliveryRecord).where(*where)
            )
            or 0
        )
        deliveries = (
            await session.scalars(
                select(WebhookDeliveryRecord)
                .where(*where)
                .order_by(WebhookDeliveryRecord.created_at.desc(), WebhookDeliveryRecord.id)
                .offset((page - 1) * per_page)
                .limit(per_page)
            )
        ).all()
        attempts: dict[str, list[WebhookAttemptRecord]] = {d.id: [] for d in deliveries}
        if deliveries:
            for attempt in (
                await session.scalars(
                    select(WebhookAttemptRecord).where(
                        WebhookAttemptRecord.delivery_id.in_(list(attempts))
                    )
                )
            ).all():
                attempts[attempt.delivery_id].append(attempt)
    return {
        "data": [delivery_json(d, attempts[d.id]) for d in deliveries],
        "pagination": _pagination(page, per_page, total),
    }


async def _own_delivery(
    session: AsyncSession, account_id: str, delivery_id: str
) -> WebhookDeliveryRecord:
    delivery = await session.get(WebhookDeliveryRecord, delivery_id)
    if delivery is None or delivery.account_id != account_id:
        raise NotFound("No such delivery.")
    return delivery


@router.get(
    "/deliveries/{delivery_id}", response_model=DeliveryResponse, responses=error_responses(404)
)
async def get_delivery(
    caller: CallerDep, state: StateDep, delivery_id: str = DELIVERY_ID
) -> dict[str, Any]:
    """One delivery and every attempt of it."""
    async with state.runtime.sessions() as session:
        delivery = await _own_delivery(session, caller.account_id, delivery_id)
        attempts = list(
            (
                await session.scalars(
                    select(WebhookAttemptRecord).where(
                        WebhookAttemptRecord.delivery_id == delivery_id
                    )
                )
            ).all()
        )
    return {"data": delivery_json(delivery, attempts)}


@router.post(
    "/deliveries/{delivery_id}/redeliver",
    status_code=202,
    response_model=RedeliveryResponse,
    responses=error_responses(404),
)
async def redeliver(
    caller: CallerDep, state: StateDep, delivery_id: str = DELIVERY_ID
) -> dict[str, Any]:
    """Send a delivery again: the same body and the same `webhook-id` (receivers that
    deduplicate by it see a repeat), with a fresh timestamp and signature, and the whole retry
    schedule again. Its attempts appear in the log."""
    async with transaction(state.runtime.sessions) as session:
        delivery = await _own_delivery(session, caller.account_id, delivery_id)
        outbox = Outbox()
        outbox.emit(
            "webhook.redelivery_requested",
            webhooks_pb2.WebhookRedeliveryRequested(delivery_id=delivery.id),
            account_id=caller.account_id,
            job_id=delivery.job_id,
        )
        await outbox.write(session, MESSAGING)
    state.runtime.relay.wake()
    return {
        "data": {
            "delivery_id": delivery.id,
            "webhook_id": delivery.webhook_id,
            "status": "requested",
        }
    }


# ------------------------------------------------------------------------- endpoints


@router.post(
    "",
    status_code=201,
    response_model=NewEndpointResponse,
    responses=error_responses(422),
)
async def create_endpoint(
    body: EndpointCreate, caller: CallerDep, state: StateDep
) -> dict[str, Any]:
    """Add an endpoint. Its `whsec_` secret (for the `v1` signature) is shown only here."""
    url = await _checked_url(state, body.url)
    now = datetime.now(UTC)
    endpoint = WebhookEndpoint(
        id=new_id("we"),
        account_id=caller.account_id,
        url=url,
        secret=new_webhook_secret(),
        event_types=_unique(list(body.event_types)),
        description=body.description,
        created_at=now,
        updated_at=now,
    )
    async with transaction(state.runtime.sessions) as session:
        session.add(endpoint)
        outbox = Outbox()
        _announce(outbox, endpoint)
        await outbox.write(session, MESSAGING)
    state.runtime.relay.wake()
    return {"data": endpoint_json(endpoint, endpoint.secret)}


@router.get("", response_model=EndpointListResponse)
async def list_endpoints(
    caller: CallerDep,
    state: StateDep,
    page: int = Query(default=1, ge=1, le=100_000),
    per_page: int = Query(default=25, ge=1, le=100),
) -> dict[str, Any]:
    """The account's endpoints, newest first; never a secret."""
    where = [WebhookEndpoint.account_id == caller.account_id, WebhookEndpoint.deleted_at.is_(None)]
    async with state.runtime.sessions() as session:
        total = int(
            await session.scalar(select(func.count()).select_from(WebhookEndpoint).where(*where))
            or 0
        )
        endpoints = (
            await session.scalars(
                select(WebhookEndpoint)
                .where(*where)
                .order_by(WebhookEndpoint.created_at.desc(), WebhookEndpoint.id)
                .offset((page - 1) * per_page)
                .limit(per_page)
            )
        ).all()
    return {
        "data": [endpoint_json(e) for e in endpoints],
        "pagination": _pagination(page, per_page, total),
    }


@router.get("/{endpoint_id}", response_model=EndpointResponse, responses=error_responses(404))
async def get_endpoint(
    caller: CallerDep, state: StateDep, endpoint_id: str = ENDPOINT_ID
) -> dict[str, Any]:
    async with state.runtime.sessions() as session:
        endpoint = await _own_endpoint(session, caller.account_id, endpoint_id)
    return {"data": endpoint_json(endpoint)}


@router.patch(
    "/{endpoint_id}", response_model=EndpointResponse, responses=error_responses(404, 422)
)
async def update_endpoint(
    body: EndpointUpdate, caller: CallerDep, state: StateDep, endpoint_id: str = ENDPOINT_ID
) -> dict[str, Any]:
    """Change the URL, the event filter or the description. Re-enables a disabled endpoint.
    The secret stays."""
    url = await _checked_url(state, body.url) if body.url is not None else None
    async with transaction(state.runtime.sessions) as session:
        endpoint = await _own_endpoint(session, caller.account_id, endpoint_id)
        if url is not None:
            endpoint.url = url
        if body.event_types is not None:
            endpoint.event_types = _unique(list(body.event_types))
        if body.description is not None:
            endpoint.description = body.description
        endpoint.disabled_at = None
        endpoint.updated_at = datetime.now(UTC)
        outbox = Outbox()
        _announce(outbox, endpoint)
        await outbox.write(session, MESSAGING)
    state.runtime.relay.wake()
    return {"data": endpoint_json(endpoint)}


@router.delete("/{endpoint_id}", response_model=EndpointResponse, responses=error_responses(404))
async def delete_endpoint(
    caller: CallerDep, state: StateDep, endpoint_id: str = ENDPOINT_ID
) -> dict[str, Any]:
    """Delete an endpoint: nothing more is sent to it, retries included."""
    async with transaction(state.runtime.sessions) as session:
        endpoint = await _own_endpoint(session, caller.account_id, endpoint_id)
        endpoint.deleted_at = datetime.now(UTC)
        endpoint.updated_at = endpoint.deleted_at
        outbox = Outbox()
        _announce(outbox, endpoint, deleted=True)
        await outbox.write(session, MESSAGING)
    state.runtime.relay.wake()
    return {"data": endpoint_json(endpoint)}


@router.post(
    "/{endpoint_id}/test",
    status_code=202,
    response_model=TestEventResponse,
    responses=error_responses(404),
)
async def send_test_event(
    caller: CallerDep, state: StateDep, endpoint_id: str = ENDPOINT_ID
) -> dict[str, Any]:
    """Send a `webhook.test` event to the endpoint, signed like any delivery. It shows up in
    the delivery log (`endpoint_id=`), with `test_id` as its `webhook-id`."""
    test_id = new_id("msg")
    async with transaction(state.runtime.sessions) as session:
        endpoint = await _own_endpoint(session, caller.account_id, endpoint_id)
        outbox = Outbox()
        outbox.emit(
            "webhook.test_requested",
            webhooks_pb2.WebhookTestRequested(endpoint_id=endpoint.id, test_id=test_id),
            account_id=caller.account_id,
        )
        await outbox.write(session, MESSAGING)
    state.runtime.relay.wake()
    return {"data": {"endpoint_id": endpoint_id, "test_id": test_id, "status": "requested"}}
