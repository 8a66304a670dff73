"""Console sessions: a random token in an HttpOnly, SameSite=Strict cookie (Secure outside
loopback), and a row in `console_sessions` keyed by the token's SHA-256, so a copy of the
database signs nobody in and signing out ends the session on every replica at once.

A session ends `console_session_ttl_s` after sign-in or `console_idle_timeout_s` after its last
request. Each holds a CSRF token that every form posts back (forms.py). An operator's session
also holds the SHA-256 of the admin token it signed in with: changing `KILN_ADMIN_TOKEN` ends
every operator session.

Only the console reads this cookie: the API never accepts it, and the console never accepts an
API key or a session token of `POST /api/v1/auth/token` (a cookie value is looked up here only).
"""

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy import delete
from starlette.requests import Request
from starlette.responses import Response

from kiln_gateway.config import GatewaySettings
from kiln_gateway.tables import ConsoleSession
from kiln_runtime.db import SessionFactory, transaction

COOKIE = "kiln_console"
COOKIE_PATH = "/console"
# The sign-in form's anti-CSRF value, before any session exists (double-submit cookie).
SIGNIN_COOKIE = "kiln_console_signin"
SIGNIN_COOKIE_TTL_S = 3600
# A session's last request is written at most this often (not one write per page).
TOUCH_EVERY = timedelta(seconds=60)

SessionKind = Literal["account", "operator"]


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class SessionState:
    """Why a cookie does or does not sign its browser in."""

    session: ConsoleSession | None
    expired: bool = False


def is_live(session: ConsoleSession, now: datetime, idle_timeout_s: int) -> bool:
    """Within its lifetime, and used within the idle timeout."""
    if _aware(session.expires_at) <= now:
        return False
    return now - _aware(session.last_seen_at) < timedelta(seconds=idle_timeout_s)


def csrf_matches(expected: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(expected.encode(), (given or "").encode())


def admin_token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ConsoleSessions:
    """The sessions table, through the gateway's async ORM sessions."""

    def __init__(self, sessions: SessionFactory, settings: GatewaySettings) -> None:
        self._sessions = sessions
        self._settings = settings

    async def create(
        self,
        kind: SessionKind,
        *,
        account_id: str | None = None,
        admin_token: str | None = None,
        replacing: str | None = None,
    ) -> tuple[str, ConsoleSession]:
        """A new session (and the end of `replacing`, the browser's earlier one); returns the
        cookie's token and the row."""
        token = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        row = ConsoleSession(
            id=token_sha256(token),
            kind=kind,
            account_id=account_id,
            csrf_token=secrets.token_urlsafe(32),
            admin_token_sha256=admin_token_sha256(admin_token) if admin_token else None,
            created_at=now,
            expires_at=now + timedelta(seconds=self._settings.console_session_ttl_s),
            last_seen_at=now,
        )
        async with transaction(self._sessions) as session:
            if replacing:
                await session.execute(
                    delete(ConsoleSession).where(ConsoleSession.id == token_sha256(replacing))
                )
            # Sessions that ended long ago go when a new one starts (no sweeper needed).
            await session.execute(
                delete(ConsoleSession).where(ConsoleSession.expires_at < now - timedelta(days=1))
            )
            session.add(row)
        return token, row

    async def find(self, token: str | None) -> SessionState:
        """The live session of a cookie's token (its last request noted), or why there is none."""
        if not token or len(token) > 128:
            return SessionState(None)
        now = datetime.now(UTC)
        async with self._sessions() as session:
            row = await session.get(ConsoleSession, token_sha256(token))
        if row is None:
            return SessionState(None)
        if not is_live(row, now, self._settings.console_idle_timeout_s):
            await self.end(token)
            return SessionState(None, expired=True)
        if now - _aware(row.last_seen_at) >= TOUCH_EVERY:
            async with transaction(self._sessions) as session:
                stored = await session.get(ConsoleSession, row.id)
                if stored is not None:
                    stored.last_seen_at = now
            row.last_seen_at = now
        return SessionState(row)

    async def end(self, token: str) -> None:
        async with transaction(self._sessions) as session:
            await session.execute(
                delete(ConsoleSession).where(ConsoleSession.id == token_sha256(token))
            )

    async def end_account_sessions(self, account_id: str) -> None:
        """Sign every browser of an account out (its suspension)."""
        async with transaction(self._sessions) as session:
            await session.execute(
                delete(ConsoleSession).where(ConsoleSession.account_id == account_id)
            )


def is_loopback_host(host: str) -> bool:
    """Whether a Host header names this machine (`localhost`, 127.0.0.0/8, `[::1]`)."""
    if host.startswith("["):  # [IPv6]:port
        name = host[1 : host.find("]")] if "]" in host else host[1:]
    elif host.count(":") == 1:  # name:port
        name = host.split(":", 1)[0]
    else:  # a name, or a bare IPv6 address
        name = host
    name = name.lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def cookie_is_secure(request: Request) -> bool:
    """Secure everywhere but on loopback, where a developer's browser speaks plain http (the
    scheme is not asked: behind a TLS proxy the gateway itself sees http)."""
    return not is_loopback_host(request.headers.get("host", ""))


def set_session_cookie(response: Response, request: Request, token: str, max_age: int) -> None:
    response.set_cookie(
        COOKIE,
        token,
        max_age=max_age,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=cookie_is_secure(request),
    )


def clear_session_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(
        COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict", secure=cookie_is_secure(request)
    )


def set_signin_cookie(response: Response, request: Request, value: str) -> None:
    response.set_cookie(
        SIGNIN_COOKIE,
        value,
        max_age=SIGNIN_COOKIE_TTL_S,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=cookie_is_secure(request),
    )
