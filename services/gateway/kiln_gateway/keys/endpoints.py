"""API keys (`/api/v1/keys`), managed with an account session token, and the login that
issues one (`POST /api/v1/auth/token`).

- Revoking sets `revoked_at`; every request authenticates against the database, so the key
  gets 401 on its very next request.
- Rotating makes a new key (a new id, a new secret, a new salt and public key) with the old
  one's name and kind, and revokes the old one, in one transaction. The id changes because a
  result's `encryption.key_id` names the key material it was sealed to: results made before the
  rotation stay decryptable with the old secret and still name the old id.
- Another account's key id is 404, like a missing one.
- A wrong password and an unknown email give the same 401 body; failed logins are throttled
  (`login_throttle.py`); a suspended account with the right password gets 403, never a token.
"""

from typing import Any

from fastapi import APIRouter, Path, Query, Request

from kiln_gateway.deps import SessionDep, StateDep
from kiln_gateway.errors import Conflict, Forbidden, NotFound, Unauthorized, error_responses
from kiln_gateway.keys import repository
from kiln_gateway.keys.login_throttle import LoginThrottle, client_address
from kiln_gateway.keys.passwords import (
    hash_password,
    needs_rehash,
    normalize_email,
    password_matches,
)
from kiln_gateway.keys.schemas import (
    ApiKeyListResponse,
    ApiKeyResponse,
    KeyCreate,
    LoginRequest,
    NewApiKeyResponse,
    SessionTokenResponse,
    key_json,
)
from kiln_gateway.keys.session_tokens import issue_session_token, signing_key
from kiln_gateway.pagination import PageDep, paged
from kiln_runtime.db import transaction

auth_router = APIRouter(prefix="/auth", tags=["auth"])
router = APIRouter(prefix="/keys", tags=["keys"])

KEY_ID = Path(pattern=r"^key_[0-9a-f]{32}$", description="A key id, `key_` + 32 hex digits.")
INVALID_LOGIN = "Invalid email or password."


@auth_router.post(
    "/token", response_model=SessionTokenResponse, responses=error_responses(401, 403, 429)
)
async def create_session_token(
    body: LoginRequest, request: Request, state: StateDep
) -> dict[str, Any]:
    """Exchange an account's email and password for a session token (for `/keys`)."""
    settings = state.settings
    email = normalize_email(body.email)
    address = client_address(request, settings.trusted_proxy_hops)
    throttle = LoginThrottle(state.rate_limiter, settings)
    await throttle.attempt(request, email, address)

    async with state.runtime.sessions() as session:
        account = await repository.account_by_email(session, email)
    password_hash = account.password_hash if account is not None else None
    if not await password_matches(password_hash, body.password) or account is None:
        raise Unauthorized(INVALID_LOGIN)
    await throttle.succeeded(email, address)
    if account.suspended:
        raise Forbidden("This account is suspended.")
    if needs_rehash(account.password_hash):
        new_hash = await hash_password(body.password)
        async with transaction(state.runtime.sessions) as session:
            await repository.set_password_hash(session, account.id, new_hash)

    issued = issue_session_token(account.id, signing_key(settings), settings.session_ttl_s)
    return {
        "data": {"token": issued.token, "token_type": "bearer", "expires_at": issued.expires_at}
    }


@router.post("", status_code=201, response_model=NewApiKeyResponse)
async def create_key(body: KeyCreate, account: SessionDep, state: StateDep) -> dict[str, Any]:
    """Make an `sk_live_` key (or `sk_test_` with `"sandbox": true`). The secret is shown once."""
    async with transaction(state.runtime.sessions) as session:
        key, secret = await repository.create_api_key(session, account.id, body.name, body.sandbox)
    return {"data": key_json(key, secret)}


@router.get("", response_model=ApiKeyListResponse)
async def list_keys(
    account: SessionDep,
    state: StateDep,
    page: PageDep,
    include_revoked: bool = Query(default=False),
) -> dict[str, Any]:
    """The account's keys, newest first; never a secret nor its hash."""
    async with state.runtime.sessions() as session:
        keys, total = await repository.list_api_keys(session, account.id, include_revoked, page)
    return paged([key_json(k) for k in keys], page, total)


@router.delete("/{key_id}", response_model=ApiKeyResponse)
async def revoke_key(account: SessionDep, state: StateDep, key_id: str = KEY_ID) -> dict[str, Any]:
    """Revoke a key: it is refused (401) from its next request on. Revoking twice is harmless."""
    async with transaction(state.runtime.sessions) as session:
        revoked = await repository.revoke_api_key(session, account.id, key_id)
        if revoked is None:
            raise NotFound("No such key.")
    state.callers.forget_key(key_id)  # at once here; within api_key_cache_s elsewhere
    return {"data": key_json(revoked[0])}


@router.post(
    "/{key_id}/rotate",
    status_code=201,
    response_model=NewApiKeyResponse,
    responses=error_responses(409),
)
async def rotate_key(account: SessionDep, state: StateDep, key_id: str = KEY_ID) -> dict[str, Any]:
    """Replace a key: a new key (new id and secret) with the same name and kind; the old one
    is revoked at once. The new secret is shown once."""
    async with transaction(state.runtime.sessions) as session:
        revoked = await repository.revoke_api_key(session, account.id, key_id)
        if revoked is None:
            raise NotFound("No such key.")
        old, revoked_now = revoked
        if not revoked_now:
            raise Conflict("This key is revoked; make a new one instead.")
        key, secret = await repository.create_api_key(session, account.id, old.name, old.sandbox)
    state.callers.forget_key(key_id)
    return {"data": {**key_json(key, secret), "rotated_from": old.id}}
