"""Webhooks (`/api/v1/webhooks/...`), with an API key: account endpoints, the account's
default secret, the platform's `v1a` public key, the delivery log, redelivery and test events.

- An endpoint is a URL (checked by the URL guard), an optional event filter among
  `job.completed`, `job.failed`, `job.canceled` (empty: all of them) and a `whsec_` secret
  shown once, at creation and otherwise kept sealed (webhooks/service.py). Every change is
  announced to the notifier (`webhooks.endpoint_changed`, the secret sealed), which keeps its
  own copy; this service never reads the notifier's tables, nor the notifier this one's.
- The delivery log is the gateway's own read model of the notifier's `webhook.attempted`
  events (handlers.py): every attempt with its time, status code, latency and error.
- Redelivery and test events are requests to the notifier (`webhook.redelivery_requested`,
  `webhook.test_requested`): 202, and the attempt shows up in the log when it is made.
"""

from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Path, Query

from kiln_gateway.deps import CallerDep, StateDep
from kiln_gateway.errors import NotFound, Unauthorized, ValidationFailed, error_responses
from kiln_gateway.ids import new_id
from kiln_gateway.keys.repository import account_by_id
from kiln_gateway.pagination import PageDep, paged
from kiln_gateway.state import GatewayState
from kiln_gateway.tables import WebhookEndpoint
from kiln_gateway.webhooks import repository
from kiln_gateway.webhooks.schemas import (
    DeliveryListResponse,
    DeliveryResponse,
    EndpointCreate,
    EndpointListResponse,
    EndpointResponse,
    EndpointUpdate,
    NewEndpointResponse,
    PublicKeyResponse,
    RedeliveryResponse,
    SecretResponse,
    TestEventResponse,
    delivery_json,
    endpoint_json,
)
from kiln_gateway.webhooks.service import (
    account_webhook_secret,
    new_endpoint,
    public_key_b64,
    unique_event_types,
)
from kiln_runtime.db import transaction
from kiln_runtime.url_guard import UnsafeUrl, resolve_public_addresses

router = APIRouter(prefix="/webhooks", tags=["webhooks"])

ENDPOINT_ID = Path(
    pattern=r"^we_[0-9a-f]{32}$", description="An endpoint id, `we_` + 32 hex digits."
)
DELIVERY_ID = Path(
    pattern=r"^dlv_[0-9a-f]{32}$", description="A delivery id, `dlv_` + 32 hex digits."
)


async def _checked_url(state: GatewayState, url: str) -> str:
    try:
        await resolve_public_addresses(url, allow_loopback=state.settings.allow_loopback_urls)
    except UnsafeUrl as exc:
        raise ValidationFailed(
            "The request has invalid fields.", [{"field": "url", "message": str(exc)}]
        ) from exc
    return url


def _no_endpoint() -> NotFound:
    return NotFound("No such webhook endpoint.")


# ------------------------------------------------------------------------- fixed routes


@router.get("/default-secret", response_model=SecretResponse, responses=error_responses(503))
async def default_secret(caller: CallerDep, state: StateDep) -> dict[str, Any]:
    """The secret that signs deliveries to a job's own `webhook_url`."""
    async with state.runtime.sessions() as session:
        account = await account_by_id(session, caller.account_id)
    if account is None:
        raise Unauthorized("Invalid API key.")
    return {"data": {"secret": account_webhook_secret(account, state.keyring)}}


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
    page: PageDep,
    job_id: str | None = Query(default=None, max_length=64),
    endpoint_id: str | None = Query(default=None, max_length=64),
    status: Literal["retrying", "delivered", "failed"] | None = Query(default=None),
) -> dict[str, Any]:
    """The delivery log, newest first: every delivery with every attempt (time, status code,
    latency, error). Filter by `job_id`, `endpoint_id` (`default` for jobs' own
    `webhook_url`s) or `status`."""
    async with state.runtime.sessions() as session:
        deliveries, total = await repository.list_deliveries(
            session,
            caller.account_id,
            page,
            job_id=job_id,
            endpoint_id="" if endpoint_id == "default" else endpoint_id,
            status=status,
        )
        attempts = await repository.attempts_of(session, [d.id for d in deliveries])
    return paged([delivery_json(d, attempts[d.id]) for d in deliveries], page, total)


@router.get(
    "/deliveries/{delivery_id}", response_model=DeliveryResponse, responses=error_responses(404)
)
async def get_delivery(
    caller: CallerDep, state: StateDep, delivery_id: str = DELIVERY_ID
) -> dict[str, Any]:
    """One delivery and every attempt of it."""
    async with state.runtime.sessions() as session:
        delivery = await repository.account_delivery(session, caller.account_id, delivery_id)
        if delivery is None:
            raise NotFound("No such delivery.")
        attempts = await repository.attempts_of(session, [delivery_id])
    return {"data": delivery_json(delivery, attempts[delivery_id])}


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
        delivery = await repository.account_delivery(session, caller.account_id, delivery_id)
        if delivery is None:
            raise NotFound("No such delivery.")
        await repository.request_redelivery(session, delivery)
    state.runtime.publisher.wake()
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
    endpoint, secret = new_endpoint(caller.account_id, url, body, state.keyring, now)
    async with transaction(state.runtime.sessions) as session:
        await repository.save_endpoint(session, endpoint)
    state.runtime.publisher.wake()
    return {"data": endpoint_json(endpoint, secret)}


@router.get("", response_model=EndpointListResponse)
async def list_endpoints(caller: CallerDep, state: StateDep, page: PageDep) -> dict[str, Any]:
    """The account's endpoints, newest first; never a secret."""
    async with state.runtime.sessions() as session:
        endpoints, total = await repository.list_endpoints(session, caller.account_id, page)
    return paged([endpoint_json(e) for e in endpoints], page, total)


@router.get("/{endpoint_id}", response_model=EndpointResponse, responses=error_responses(404))
async def get_endpoint(
    caller: CallerDep, state: StateDep, endpoint_id: str = ENDPOINT_ID
) -> dict[str, Any]:
    async with state.runtime.sessions() as session:
        endpoint = await repository.account_endpoint(session, caller.account_id, endpoint_id)
    if endpoint is None:
        raise _no_endpoint()
    return {"data": endpoint_json(endpoint)}


@router.patch(
    "/{endpoint_id}", response_model=EndpointResponse, responses=error_responses(404, 409, 422)
)
async def update_endpoint(
    body: EndpointUpdate, caller: CallerDep, state: StateDep, endpoint_id: str = ENDPOINT_ID
) -> dict[str, Any]:
    """Change the URL, the event filter or the description. Re-enables a disabled endpoint.
    The secret stays."""
    url = await _checked_url(state, body.url) if body.url is not None else None

    def change(endpoint: WebhookEndpoint) -> None:
        if url is not None:
            endpoint.url = url
        if body.event_types is not None:
            endpoint.event_types = unique_event_types(list(body.event_types))
        if body.description is not None:
            endpoint.description = body.description
        endpoint.disabled_at = None
        endpoint.updated_at = datetime.now(UTC)

    endpoint = await repository.change_endpoint(
        state.runtime.sessions, caller.account_id, endpoint_id, change
    )
    if endpoint is None:
        raise _no_endpoint()
    state.runtime.publisher.wake()
    return {"data": endpoint_json(endpoint)}


@router.delete(
    "/{endpoint_id}", response_model=EndpointResponse, responses=error_responses(404, 409)
)
async def delete_endpoint(
    caller: CallerDep, state: StateDep, endpoint_id: str = ENDPOINT_ID
) -> dict[str, Any]:
    """Delete an endpoint: nothing more is sent to it, retries included."""

    def delete(endpoint: WebhookEndpoint) -> None:
        endpoint.deleted_at = datetime.now(UTC)
        endpoint.updated_at = endpoint.deleted_at

    endpoint = await repository.change_endpoint(
        state.runtime.sessions, caller.account_id, endpoint_id, delete, deleted=True
    )
    if endpoint is None:
        raise _no_endpoint()
    state.runtime.publisher.wake()
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
        endpoint = await repository.account_endpoint(session, caller.account_id, endpoint_id)
        if endpoint is None:
            raise _no_endpoint()
        await repository.request_test_event(session, endpoint, test_id)
    state.runtime.publisher.wake()
    return {"data": {"endpoint_id": endpoint_id, "test_id": test_id, "status": "requested"}}
