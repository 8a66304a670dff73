"""Webhooks in the console: account endpoints (create with an event filter, the signing secret
shown once, disable and enable, delete), a test event, the delivery log with every attempt's
status, response code and latency, and redelivery. The same repository calls as the API's
`/api/v1/webhooks` (webhooks/endpoints.py): every change is announced to the notifier in the
transaction that makes it."""

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import get_args

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import RedirectResponse, Response

from kiln_gateway.console.auth import AccountForm, CurrentAccount
from kiln_gateway.console.errors import ConsoleError
from kiln_gateway.console.listing import checked_id, notice, page_of
from kiln_gateway.console.pages import render
from kiln_gateway.deps import StateDep
from kiln_gateway.errors import Conflict
from kiln_gateway.ids import new_id
from kiln_gateway.pagination import pagination
from kiln_gateway.state import GatewayState
from kiln_gateway.tables import WebhookEndpoint
from kiln_gateway.webhooks import repository
from kiln_gateway.webhooks.schemas import EndpointCreate, EventType
from kiln_gateway.webhooks.service import new_endpoint
from kiln_runtime.db import transaction
from kiln_runtime.url_guard import UnsafeUrl, resolve_public_addresses

router = APIRouter(include_in_schema=False)

EVENT_TYPES = get_args(EventType)
DELIVERY_STATUSES = ("retrying", "delivered", "failed")
NO_ENDPOINT = "There is no such webhook endpoint."


async def _deliveries(request: Request, state: GatewayState, account_id: str) -> dict[str, object]:
    query = request.query_params
    endpoint = query.get("endpoint", "")[:64] or None
    status = query.get("status") if query.get("status") in DELIVERY_STATUSES else None
    page = page_of(request, 20)
    async with state.runtime.sessions() as session:
        deliveries, total = await repository.list_deliveries(
            session,
            account_id,
            page,
            job_id=None,
            endpoint_id="" if endpoint == "default" else endpoint,
            status=status,
        )
        attempts = await repository.attempts_of(session, [d.id for d in deliveries])
    return {
        "deliveries": deliveries,
        "attempts": attempts,
        "delivery_pagination": pagination(page, total),
        "delivery_endpoint": endpoint or "",
        "delivery_status": status or "",
        "delivery_kept": [(k, v) for k, v in (("endpoint", endpoint), ("status", status)) if v],
    }


async def _page(
    request: Request,
    user: CurrentAccount,
    state: GatewayState,
    *,
    error: str = "",
    form: Mapping[str, object] | None = None,
    status: int = 200,
) -> Response:
    async with state.runtime.sessions() as session:
        endpoints, _ = await repository.list_endpoints(
            session, user.account_id, page_of(request, 100)
        )
    return render(
        request,
        "webhooks.html",
        {
            "user": user,
            "nav": "webhooks",
            "endpoints": endpoints,
            "event_types": EVENT_TYPES,
            "statuses": DELIVERY_STATUSES,
            "notice": notice(request),
            "error": error,
            "form": form or {},
            **await _deliveries(request, state, user.account_id),
        },
        status=status,
    )


@router.get("/console/webhooks")
async def webhooks_page(request: Request, user: CurrentAccount, state: StateDep) -> Response:
    return await _page(request, user, state)


@router.get("/console/webhooks/deliveries")
async def delivery_log(request: Request, user: CurrentAccount, state: StateDep) -> Response:
    """The delivery log alone: the page's htmx refreshes it in place."""
    return render(
        request,
        "deliveries.html",
        {"user": user, **await _deliveries(request, state, user.account_id)},
    )


@router.post("/console/webhooks")
async def create_endpoint(
    request: Request, user: CurrentAccount, form: AccountForm, state: StateDep
) -> Response:
    entered = {
        "url": form.get("url").strip(),
        "event_types": form.all("event_types"),
        "description": form.get("description").strip(),
    }
    try:
        body = EndpointCreate.model_validate(entered)
        # The API's URL guard (webhooks/endpoints.py): https, public addresses only.
        await resolve_public_addresses(body.url, allow_loopback=state.settings.allow_loopback_urls)
        url = body.url
    except ValidationError:
        return await _page(
            request,
            user,
            state,
            error="Give an https URL (at most 2048 characters), a "
            "description of at most 500, and event types from the list.",
            form=entered,
            status=422,
        )
    except UnsafeUrl as exc:
        return await _page(
            request,
            user,
            state,
            error=f"This URL cannot receive webhooks: {exc}",
            form=entered,
            status=422,
        )
    now = datetime.now(UTC)
    endpoint, secret = new_endpoint(user.account_id, url, body, state.keyring, now)
    async with transaction(state.runtime.sessions) as session:
        await repository.save_endpoint(session, endpoint)
    state.runtime.publisher.wake()
    return render(
        request,
        "webhook_secret.html",
        {"user": user, "nav": "webhooks", "endpoint": endpoint, "secret": secret},
        status=201,
    )


async def _change_endpoint(
    state: GatewayState, account_id: str, endpoint_id: str, change: str
) -> None:
    checked_id(endpoint_id, "we")
    now = datetime.now(UTC)
    if change == "test":
        async with transaction(state.runtime.sessions) as session:
            endpoint = await repository.account_endpoint(session, account_id, endpoint_id)
            if endpoint is None:
                raise ConsoleError(404, NO_ENDPOINT)
            await repository.request_test_event(session, endpoint, new_id("msg"))
        state.runtime.publisher.wake()
        return

    def apply(endpoint: WebhookEndpoint) -> None:
        if change == "delete":
            endpoint.deleted_at = now
        else:
            endpoint.disabled_at = now if change == "disable" else None
        endpoint.updated_at = now

    try:
        changed = await repository.change_endpoint(
            state.runtime.sessions, account_id, endpoint_id, apply, deleted=change == "delete"
        )
    except Conflict as exc:
        raise ConsoleError(409, exc.message) from None
    if changed is None:
        raise ConsoleError(404, NO_ENDPOINT)
    state.runtime.publisher.wake()


@router.post("/console/webhooks/{endpoint_id}/test")
async def send_test(
    endpoint_id: str, user: CurrentAccount, form: AccountForm, state: StateDep
) -> Response:
    await _change_endpoint(state, user.account_id, endpoint_id, "test")
    return RedirectResponse(
        f"/console/webhooks?notice=test-sent&endpoint={endpoint_id}#deliveries", status_code=303
    )


@router.post("/console/webhooks/{endpoint_id}/disable")
async def disable(
    endpoint_id: str, user: CurrentAccount, form: AccountForm, state: StateDep
) -> Response:
    await _change_endpoint(state, user.account_id, endpoint_id, "disable")
    return RedirectResponse("/console/webhooks?notice=endpoint-disabled", status_code=303)


@router.post("/console/webhooks/{endpoint_id}/enable")
async def enable(
    endpoint_id: str, user: CurrentAccount, form: AccountForm, state: StateDep
) -> Response:
    await _change_endpoint(state, user.account_id, endpoint_id, "enable")
    return RedirectResponse("/console/webhooks?notice=endpoint-enabled", status_code=303)


@router.post("/console/webhooks/{endpoint_id}/delete")
async def delete(
    endpoint_id: str, user: CurrentAccount, form: AccountForm, state: StateDep
) -> Response:
    await _change_endpoint(state, user.account_id, endpoint_id, "delete")
    return RedirectResponse("/console/webhooks?notice=endpoint-deleted", status_code=303)


@router.post("/console/webhooks/deliveries/{delivery_id}/redeliver")
async def redeliver(
    delivery_id: str, user: CurrentAccount, form: AccountForm, state: StateDep
) -> Response:
    checked_id(delivery_id, "dlv")
    async with transaction(state.runtime.sessions) as session:
        delivery = await repository.account_delivery(session, user.account_id, delivery_id)
        if delivery is None:
            raise ConsoleError(404, "There is no such delivery.")
        await repository.request_redelivery(session, delivery)
    state.runtime.publisher.wake()
    return RedirectResponse("/console/webhooks?notice=redelivery#deliveries", status_code=303)
