"""Webhook signatures (docs/webhooks.md): verify what Kiln sends, and sign what `kiln listen`
forwards.

Kiln signs `{webhook-id}.{webhook-timestamp}.{body}` twice, per Standard Webhooks:
``v1,<base64 HMAC-SHA256>`` with the endpoint's `whsec_` secret (checked here by the
`standardwebhooks` library itself) and ``v1a,<base64 Ed25519>`` with the platform key whose
public half `GET /webhooks/public-key` serves.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from standardwebhooks import Webhook

from kiln_client.errors import WebhookVerificationError
from kiln_client.models import Job, parse_time

__all__ = ["WebhookEvent", "load_public_key", "sign_webhook", "verify_webhook"]

DEFAULT_TOLERANCE_S = 300


@dataclass(frozen=True)
class WebhookEvent:
    """A verified delivery: ``id`` is its `webhook-id` (the same on every retry: deduplicate
    by it), ``data`` the job object (or the test event's data)."""

    id: str
    type: str
    timestamp: datetime | None
    data: dict[str, Any]
    raw: dict[str, Any] = field(repr=False, compare=False)
    job: Job | None = field(default=None, compare=False)


def load_public_key(public_key: str | bytes | Ed25519PublicKey) -> Ed25519PublicKey:
    """An Ed25519 public key from its base64 text (as served), raw 32 bytes, or itself."""
    if isinstance(public_key, Ed25519PublicKey):
        return public_key
    if isinstance(public_key, str):
        try:
            raw = base64.b64decode(public_key.strip(), validate=True)
        except binascii.Error:
            raise WebhookVerificationError("the public key is not valid base64") from None
    else:
        raw = bytes(public_key)
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise WebhookVerificationError("the public key is not a 32-byte Ed25519 key") from None


def _lower(headers: Mapping[str, str] | Any) -> dict[str, str]:
    """Header names in lower case, from a dict, httpx.Headers or a list of pairs."""
    pairs: Any = headers.items() if hasattr(headers, "items") else headers
    return {str(k).lower(): str(v) for k, v in pairs}


def _check_timestamp(stamp: str, tolerance: float, now: float | None) -> None:
    try:
        sent = int(stamp)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not a number") from None
    if abs((time.time() if now is None else now) - sent) > tolerance:
        raise WebhookVerificationError(
            f"webhook-timestamp is more than {tolerance:g} s away from now (a replay, or a "
            "clock that is off)"
        )


def _check_v1a(body: bytes, headers: dict[str, str], key: Ed25519PublicKey) -> None:
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    for part in headers["webhook-signature"].split():
        version, _, signature = part.partition(",")
        if version != "v1a":
            continue
        try:
            key.verify(base64.b64decode(signature, validate=True), signed)
            return
        except (InvalidSignature, binascii.Error, ValueError):
            continue
    raise WebhookVerificationError("no valid v1a signature")


def _check_v1(body: bytes, headers: dict[str, str], secret: str) -> None:
    try:
        Webhook(secret).verify(body, headers, json_parse=False)
    except Exception as exc:  # the library raises its own types and, for garbage, ValueError
        raise WebhookVerificationError(f"no valid v1 signature ({exc})") from None


def verify_webhook(
    body: bytes | str,
    headers: Mapping[str, str] | Any,
    *,
    secret: str | None = None,
    public_key: str | bytes | Ed25519PublicKey | None = None,
    tolerance: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> WebhookEvent:
    """Check a delivery and return its event; raise WebhookVerificationError otherwise.

    ``secret`` (the endpoint's or the account's default `whsec_` secret) checks ``v1``;
    ``public_key`` (`GET /webhooks/public-key`) checks ``v1a``; with both, both must hold.
    Pass the raw body, not re-serialized JSON. The timestamp must be within ``tolerance``
    seconds of now (the `standardwebhooks` library also holds ``v1`` to its own 5 minutes).
    """
    if secret is None and public_key is None:
        raise ValueError("verify_webhook needs secret= (v1), public_key= (v1a), or both")
    raw_body = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    lowered = _lower(headers)
    missing = [
        h for h in ("webhook-id", "webhook-timestamp", "webhook-signature") if h not in lowered
    ]
    if missing:
        raise WebhookVerificationError(f"missing header(s): {', '.join(missing)}")
    _check_timestamp(lowered["webhook-timestamp"], tolerance, now)
    if public_key is not None:
        _check_v1a(raw_body, lowered, load_public_key(public_key))
    if secret is not None:
        _check_v1(raw_body, lowered, secret)
    try:
        payload = json.loads(raw_body)
    except (UnicodeDecodeError, ValueError):
        raise WebhookVerificationError("the body is not JSON") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("type"), str):
        raise WebhookVerificationError("the body is not a Kiln event")
    data: dict[str, Any] = payload["data"] if isinstance(payload.get("data"), dict) else {}
    job = Job.from_dict(data) if payload["type"].startswith("job.") and "status" in data else None
    return WebhookEvent(
        id=lowered["webhook-id"],
        type=payload["type"],
        timestamp=parse_time(payload.get("timestamp")),
        data=dict(data),
        raw=payload,
        job=job,
    )


def sign_webhook(
    body: bytes,
    *,
    msg_id: str,
    secret: str | None = None,
    private_key: Ed25519PrivateKey | None = None,
    timestamp: int | None = None,
) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body`` (as `kiln listen` sends them)."""
    stamp = int(time.time()) if timestamp is None else timestamp
    signatures = []
    if secret is not None:
        when = datetime.fromtimestamp(stamp, tz=UTC)
        signatures.append(Webhook(secret).sign(msg_id, when, body.decode("utf-8")))
    if private_key is not None:
        signed = f"{msg_id}.{stamp}.".encode() + body
        signatures.append("v1a," + base64.b64encode(private_key.sign(signed)).decode("ascii"))
    if not signatures:
        raise ValueError("sign_webhook needs secret= or private_key=")
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": " ".join(signatures),
    }
