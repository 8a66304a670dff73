"""Account session tokens: short-lived HS256 JWTs that `POST /api/v1/auth/token` issues and key
management accepts. Claims: `sub` (account id), `iat`, `exp`, `jti`, `typ` = "session".

Kept apart from the login route (`endpoints.py`) so that `deps.py` can verify a token without
importing a router."""

import logging
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import jwt

from kiln_gateway.config import GatewaySettings

log = logging.getLogger(__name__)

ALGORITHM = "HS256"
TOKEN_TYPE = "session"
REQUIRED_CLAIMS = ("sub", "iat", "exp", "jti", "typ")

# Without KILN_SESSION_SIGNING_KEY, a random key per process: tokens stop working when it
# restarts and are not accepted by other replicas, but nobody can forge them.
_process_key = secrets.token_urlsafe(32)
_warned = False


class InvalidSessionToken(Exception):
    pass


@dataclass(frozen=True)
class SessionToken:
    token: str
    account_id: str
    expires_at: datetime


def signing_key(settings: GatewaySettings) -> str:
    global _warned
    if settings.session_signing_key:
        return settings.session_signing_key
    if not _warned:
        _warned = True
        log.warning(
            "KILN_SESSION_SIGNING_KEY is not set: session tokens are signed with a random key "
            "of this process (they end when it restarts and other replicas refuse them)"
        )
    return _process_key


def issue_session_token(
    account_id: str, key: str, ttl_s: int, now: float | None = None
) -> SessionToken:
    issued = int(time.time() if now is None else now)
    claims = {
        "sub": account_id,
        "iat": issued,
        "exp": issued + ttl_s,
        "jti": uuid.uuid4().hex,
        "typ": TOKEN_TYPE,
    }
    token = jwt.encode(claims, key, algorithm=ALGORITHM)
    return SessionToken(token, account_id, datetime.fromtimestamp(issued + ttl_s, UTC))


def verify_session_token(token: str, key: str) -> str:
    """The account id a valid, unexpired session token names; InvalidSessionToken otherwise."""
    try:
        claims = jwt.decode(
            token, key, algorithms=[ALGORITHM], options={"require": list(REQUIRED_CLAIMS)}
        )
    except jwt.PyJWTError as exc:
        raise InvalidSessionToken(str(exc)) from exc
    if claims.get("typ") != TOKEN_TYPE:
        raise InvalidSessionToken("not a session token")
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise InvalidSessionToken("no subject")
    return subject
