"""Signed, expiring download tokens for `/api/v1/files/{token}` (no API key needed)."""

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime


class InvalidFileToken(ValueError):
    pass


@dataclass(frozen=True)
class FileGrant:
    blob_key: str
    content_type: str
    expires_at: datetime


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_file_token(grant: FileGrant, key: str) -> str:
    body = json.dumps(
        {"k": grant.blob_key, "t": grant.content_type, "e": int(grant.expires_at.timestamp())},
        separators=(",", ":"),
    ).encode()
    mac = hmac.new(key.encode(), body, hashlib.sha256).digest()
    return f"{_b64(body)}.{_b64(mac)}"


def verify_file_token(token: str, key: str, now: datetime | None = None) -> FileGrant:
    try:
        body_text, mac_text = token.split(".")
        body, mac = _unb64(body_text), _unb64(mac_text)
    except ValueError as exc:
        raise InvalidFileToken("malformed token") from exc
    expected = hmac.new(key.encode(), body, hashlib.sha256).digest()
    if not hmac.compare_digest(mac, expected):
        raise InvalidFileToken("bad signature")
    try:
        claims = json.loads(body)
        grant = FileGrant(
            blob_key=str(claims["k"]),
            content_type=str(claims["t"]),
            expires_at=datetime.fromtimestamp(int(claims["e"]), UTC),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidFileToken("malformed claims") from exc
    if grant.expires_at <= (now or datetime.now(UTC)):
        raise InvalidFileToken("expired")
    return grant
