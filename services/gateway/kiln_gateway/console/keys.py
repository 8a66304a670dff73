"""API keys in the console: make one (live, or sandbox with the "Sandbox key" box), see its
secret once with a copy button, list, rotate and revoke. The same repository calls as the
API's `/api/v1/keys` (keys/endpoints.py); another account's key id is 404."""

from fastapi import APIRouter, Request
from starlette.responses import RedirectResponse, Response

from kiln_gateway.console.auth import AccountForm, CurrentAccount
from kiln_gateway.console.errors import ConsoleError
from kiln_gateway.console.listing import checked_id, notice, page_of
from kiln_gateway.console.pages import render
from kiln_gateway.deps import StateDep
from kiln_gateway.keys import repository
from kiln_gateway.pagination import pagination
from kiln_gateway.tables import ApiKey
from kiln_runtime.db import transaction

router = APIRouter(include_in_schema=False)

NAME_MAX = 200


async def _keys_page(
    request: Request, user: CurrentAccount, state: StateDep, *, error: str = "", status: int = 200
) -> Response:
    page = page_of(request)
    include_revoked = request.query_params.get("revoked") == "1"
    async with state.runtime.sessions() as session:
        keys, total = await repository.list_api_keys(
            session, user.account_id, include_revoked, page
        )
    return render(
        request,
        "keys.html",
        {
            "user": user,
            "nav": "keys",
            "keys": keys,
            "pagination": pagination(page, total),
            "include_revoked": include_revoked,
            "notice": notice(request),
            "error": error,
        },
        status=status,
    )


@router.get("/console/keys")
async def keys_page(request: Request, user: CurrentAccount, state: StateDep) -> Response:
    return await _keys_page(request, user, state)


def _secret_page(
    request: Request, user: CurrentAccount, key: ApiKey, secret: str, rotated_from: str | None
) -> Response:
    return render(
        request,
        "key_secret.html",
        {"user": user, "nav": "keys", "key": key, "secret": secret, "rotated_from": rotated_from},
        status=201,
    )


@router.post("/console/keys")
async def create_key(
    request: Request, user: CurrentAccount, form: AccountForm, state: StateDep
) -> Response:
    name = form.get("name").strip()
    if not name or len(name) > NAME_MAX:
        return await _keys_page(
            request,
            user,
            state,
            error=f"Give the key a name of 1 to {NAME_MAX} characters.",
            status=422,
        )
    sandbox = form.get("sandbox") == "on"
    async with transaction(state.runtime.sessions) as session:
        key, secret = await repository.create_api_key(session, user.account_id, name, sandbox)
    return _secret_page(request, user, key, secret, None)


@router.post("/console/keys/{key_id}/rotate")
async def rotate_key(
    key_id: str, request: Request, user: CurrentAccount, form: AccountForm, state: StateDep
) -> Response:
    checked_id(key_id, "key")
    async with transaction(state.runtime.sessions) as session:
        revoked = await repository.revoke_api_key(session, user.account_id, key_id)
        if revoked is None:
            raise ConsoleError(404, "There is no such key.")
        old, revoked_now = revoked
        if not revoked_now:
            raise ConsoleError(409, "This key is revoked already; make a new one instead.")
        key, secret = await repository.create_api_key(
            session, user.account_id, old.name, old.sandbox
        )
    state.callers.forget_key(key_id)
    return _secret_page(request, user, key, secret, old.id)


@router.post("/console/keys/{key_id}/revoke")
async def revoke_key(
    key_id: str, user: CurrentAccount, form: AccountForm, state: StateDep
) -> Response:
    checked_id(key_id, "key")
    async with transaction(state.runtime.sessions) as session:
        revoked = await repository.revoke_api_key(session, user.account_id, key_id)
    if revoked is None:
        raise ConsoleError(404, "There is no such key.")
    state.callers.forget_key(key_id)
    return RedirectResponse("/console/keys?notice=key-revoked", status_code=303)
