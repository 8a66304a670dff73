"""Request dependencies: the transaction-owning session, the caller's identity."""

import hmac
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Header, Request

from kiln_gateway.errors import Forbidden, Unauthorized
from kiln_gateway.keys import repository as keys
from kiln_gateway.keys.service import API_KEY_PREFIXES, secret_sha256
from kiln_gateway.keys.session_tokens import (
    InvalidSessionToken,
    signing_key,
    verify_session_token,
)
from kiln_gateway.ratelimits import limit_api_key
from kiln_gateway.state import GatewayState
from kiln_gateway.tables import Account, ApiKey


# Dependencies are `async def` even when they do not await: FastAPI runs a plain `def` on its
# thread pool, a thread hop per request (about 5 % of the gateway's CPU under load).
async def get_state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


StateDep = Annotated[GatewayState, Depends(get_state)]


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise Unauthorized("Missing Authorization header.")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 512:
        raise Unauthorized("Authorization must be 'Bearer <token>'.")
    return token


async def require_admin(
    state: StateDep, authorization: Annotated[str | None, Header()] = None
) -> None:
    token = _bearer(authorization)
    expected = state.settings.admin_token
    if not expected or not hmac.compare_digest(token.encode(), expected.encode()):
        raise Unauthorized("Invalid admin token.")


AdminDep = Annotated[None, Depends(require_admin)]


@dataclass(frozen=True)
class Caller:
    """Who calls with an API key: the key (its account's id with it)."""

    key: ApiKey

    @property
    def account_id(self) -> str:
        return self.key.account_id


async def current_caller(
    state: StateDep, authorization: Annotated[str | None, Header()] = None
) -> Caller:
    """The API key's caller, from a cache at most `api_key_cache_s` old (keys/callers.py): no
    database read for most requests and no write for any."""
    token = _bearer(authorization)
    if not token.startswith(API_KEY_PREFIXES):
        raise Unauthorized("Invalid API key.")
    known = await state.callers.key(secret_sha256(token))
    if known is None or known.key.revoked_at is not None:
        raise Unauthorized("Invalid API key.")
    if known.suspended:
        raise Forbidden("This account is suspended.")
    state.last_used.note(known.key.id, datetime.now(UTC))
    return Caller(key=known.key)


async def rate_limited_caller(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Caller:
    """The caller, once this request is counted against its key's rate limit (429 when over;
    the X-RateLimit-* headers go on the response either way).

    One dependency, not one on `current_caller` and `get_state`: FastAPI works out each
    sub-dependency again for every request, which cost more than checking the key. (So
    `app.dependency_overrides` of those two do not reach the API-key routes: override this.)"""
    state = await get_state(request)
    caller = await current_caller(state, authorization)
    await limit_api_key(request, state.settings, state.rate_limiter, caller.key)
    return caller


# Every route that takes an API key is rate limited through this dependency.
CallerDep = Annotated[Caller, Depends(rate_limited_caller)]


async def current_account_from_session(
    state: StateDep, authorization: Annotated[str | None, Header()] = None
) -> Account:
    """The account of a session token from `POST /api/v1/auth/token` (key management)."""
    token = _bearer(authorization)
    if token.startswith(API_KEY_PREFIXES):
        raise Unauthorized("This route needs a session token (POST /api/v1/auth/token).")
    try:
        account_id = verify_session_token(token, signing_key(state.settings))
    except InvalidSessionToken as exc:
        raise Unauthorized("Invalid or expired session token.") from exc
    async with state.runtime.sessions() as session:
        account = await keys.account_by_id(session, account_id)
    if account is None:
        raise Unauthorized("Invalid or expired session token.")
    if account.suspended:
        raise Forbidden("This account is suspended.")
    return account


SessionDep = Annotated[Account, Depends(current_account_from_session)]
