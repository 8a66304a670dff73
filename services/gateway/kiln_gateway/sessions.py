"""Account sessions: `POST /api/v1/auth/token` turns an email and a password into a session
token (see `session_tokens.py`) for key management.

- Passwords are argon2id hashes (argon2-cffi); a hash made with older parameters is upgraded at
  the next successful login.
- A wrong password and an unknown email give the same 401 body, and take about the same time:
  an unknown email is checked against a dummy hash.
- Failed logins are throttled per email and per client address (`login_*` settings): each
  attempt is counted atomically before its password is checked and taken back when it
  succeeds, so the N+1th failure in a window is answered 429 with `Retry-After` even when the
  attempts race. The counters use the rate limiter's store, so with the database store (the
  default) every replica shares them; with the memory store each process counts on its own.
- A suspended account with the right password gets 403, never a token.
"""

import asyncio
import hashlib
from datetime import datetime
from typing import Any, Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import APIRouter, Request
from pydantic import BaseModel
from sqlalchemy import select

from kiln_gateway.config import GatewaySettings
from kiln_gateway.deps import StateDep
from kiln_gateway.errors import Forbidden, Unauthorized, error_responses
from kiln_gateway.models import Account
from kiln_gateway.ratelimits import Quota, RateLimited, RateLimiter, set_response_headers
from kiln_gateway.schemas import LoginRequest
from kiln_gateway.session_tokens import issue_session_token, signing_key
from kiln_runtime.db import transaction

router = APIRouter(prefix="/auth", tags=["auth"])

_hasher = PasswordHasher()
_dummy_hash: str | None = None

INVALID_LOGIN = "Invalid email or password."


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


async def password_matches(password_hash: str | None, password: str) -> bool:
    """Whether `password` matches `password_hash`. With no hash (an unknown email) the
    password is checked against a dummy hash anyway, so that both take the same time."""
    global _dummy_hash
    if password_hash is None:
        if _dummy_hash is None:
            _dummy_hash = await hash_password("kiln: no such account")
        await asyncio.to_thread(_verify, _dummy_hash, password)
        return False
    return await asyncio.to_thread(_verify, password_hash, password)


def normalize_email(email: str) -> str:
    return email.strip().lower()


def client_address(request: Request, trusted_proxy_hops: int) -> str:
    """The client's address: the connection's, or with `trusted_proxy_hops` proxies in front,
    the entry of X-Forwarded-For that the outermost trusted proxy appended."""
    peer = request.client.host if request.client else "unknown"
    if trusted_proxy_hops <= 0:
        return peer
    forwarded = [
        part.strip()
        for value in request.headers.getlist("x-forwarded-for")
        for part in value.split(",")
        if part.strip()
    ]
    if len(forwarded) < trusted_proxy_hops:
        return forwarded[0] if forwarded else peer
    return forwarded[-trusted_proxy_hops][:64]


class LoginThrottle:
    """Failed logins per email and per client address, in fixed windows."""

    def __init__(self, limiter: RateLimiter, settings: GatewaySettings) -> None:
        self.limiter = limiter
        window = settings.login_failure_window_s
        self.email_quota = Quota(settings.login_max_failures_per_email, window)
        self.address_quota = Quota(settings.login_max_failures_per_ip, window)

    @staticmethod
    def email_bucket(email: str) -> str:
        return "login:email:" + hashlib.sha256(email.encode()).hexdigest()

    @staticmethod
    def address_bucket(address: str) -> str:
        return f"login:addr:{address}"

    async def attempt(self, request: Request, email: str, address: str) -> None:
        """Count an attempt; RateLimited when its email or address already failed too often."""
        for bucket, quota in (
            (self.address_bucket(address), self.address_quota),
            (self.email_bucket(email), self.email_quota),
        ):
            decision = await self.limiter.hit(bucket, quota)
            if not decision.allowed:
                set_response_headers(request, {"Retry-After": str(decision.reset_s)})
                raise RateLimited(f"Too many failed logins. Retry after {decision.reset_s} s.")

    async def succeeded(self, email: str, address: str) -> None:
        """Take the attempt back: only failures count."""
        await self.limiter.clear(self.email_bucket(email), self.email_quota)
        await self.limiter.hit(self.address_bucket(address), self.address_quota, amount=-1)


class SessionTokenData(BaseModel):
    token: str
    token_type: Literal["bearer"] = "bearer"
    expires_at: datetime


class SessionTokenResponse(BaseModel):
    data: SessionTokenData


@router.post(
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
        account = await session.scalar(select(Account).where(Account.email == email))
    password_hash = account.password_hash if account is not None else None
    if not await password_matches(password_hash, body.password) or account is None:
        raise Unauthorized(INVALID_LOGIN)
    await throttle.succeeded(email, address)
    if account.suspended:
        raise Forbidden("This account is suspended.")
    if _hasher.check_needs_rehash(account.password_hash):
        new_hash = await hash_password(body.password)
        async with transaction(state.runtime.sessions) as session:
            stored = await session.get(Account, account.id)
            if stored is not None:
                stored.password_hash = new_hash

    issued = issue_session_token(account.id, signing_key(settings), settings.session_ttl_s)
    return {
        "data": {"token": issued.token, "token_type": "bearer", "expires_at": issued.expires_at}
    }
