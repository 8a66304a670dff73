"""verify_webhook: `v1` (through standardwebhooks) and `v1a` (Ed25519), timestamps, tampering."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from standardwebhooks import Webhook

from kiln_client import WebhookVerificationError, sign_webhook, verify_webhook

SECRET = "whsec_" + base64.b64encode(b"k" * 24).decode()
PLATFORM = Ed25519PrivateKey.generate()
PUBLIC_B64 = base64.b64encode(PLATFORM.public_key().public_bytes_raw()).decode()
JOB = {
    "id": "job_" + "a" * 32,
    "model": "kiln/prompt-to-image",
    "status": "completed",
    "input": {"prompt": "a lighthouse"},
    "progress": 1.0,
    "cost": "5",
    "result": None,
    "error": None,
}
BODY = json.dumps(
    {"type": "job.completed", "timestamp": "2026-11-21T09:14:19Z", "data": JOB}
).encode()


def signed(body: bytes = BODY, *, stamp: int | None = None, **kw: Any) -> dict[str, str]:
    return sign_webhook(
        body,
        msg_id="msg_1",
        secret=kw.get("secret", SECRET),
        private_key=kw.get("private_key", PLATFORM),
        timestamp=stamp,
    )


def test_v1_matches_the_reference_library() -> None:
    headers = signed(private_key=None)
    assert Webhook(SECRET).verify(BODY, headers)["type"] == "job.completed"
    event = verify_webhook(BODY, headers, secret=SECRET)
    assert event.id == "msg_1"
    assert event.type == "job.completed"
    assert event.job is not None and event.job.status == "completed"
    assert event.job.cost is not None and str(event.job.cost) == "5"


def test_v1a_alone_and_both() -> None:
    headers = signed()
    assert headers["webhook-signature"].startswith("v1,")
    assert " v1a," in headers["webhook-signature"]
    assert verify_webhook(BODY, headers, public_key=PUBLIC_B64).type == "job.completed"
    assert verify_webhook(BODY, headers, secret=SECRET, public_key=PUBLIC_B64).id == "msg_1"
    raw = PLATFORM.public_key().public_bytes_raw()
    assert verify_webhook(BODY, headers, public_key=raw).id == "msg_1"


def test_header_names_in_any_case() -> None:
    headers = {k.title(): v for k, v in signed().items()}
    assert verify_webhook(BODY, headers, secret=SECRET).id == "msg_1"


def test_wrong_secret_or_key_fails() -> None:
    headers = signed()
    other = "whsec_" + base64.b64encode(b"z" * 24).decode()
    with pytest.raises(WebhookVerificationError, match="v1"):
        verify_webhook(BODY, headers, secret=other)
    stranger = base64.b64encode(Ed25519PrivateKey.generate().public_key().public_bytes_raw())
    with pytest.raises(WebhookVerificationError, match="v1a"):
        verify_webhook(BODY, headers, public_key=stranger.decode())


def test_both_must_hold_when_both_are_given() -> None:
    only_v1 = signed(private_key=None)
    with pytest.raises(WebhookVerificationError, match="v1a"):
        verify_webhook(BODY, only_v1, secret=SECRET, public_key=PUBLIC_B64)


def test_tampered_body_fails_both() -> None:
    headers = signed()
    tampered = BODY.replace(b"completed", b"failed!!!")
    with pytest.raises(WebhookVerificationError):
        verify_webhook(tampered, headers, secret=SECRET)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(tampered, headers, public_key=PUBLIC_B64)


def test_old_or_future_timestamps_fail() -> None:
    now = int(time.time())
    for stamp in (now - 301, now + 301):
        headers = signed(stamp=stamp)
        with pytest.raises(WebhookVerificationError, match="timestamp"):
            verify_webhook(BODY, headers, public_key=PUBLIC_B64)
    assert verify_webhook(BODY, signed(stamp=now - 200), public_key=PUBLIC_B64).id == "msg_1"
    with pytest.raises(WebhookVerificationError):
        verify_webhook(BODY, signed(stamp=now - 200), public_key=PUBLIC_B64, tolerance=60)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"webhook-id": "x", "webhook-timestamp": "1"},
        {"webhook-id": "x", "webhook-timestamp": "soon", "webhook-signature": "v1,AAAA"},
    ],
)
def test_missing_or_malformed_headers_fail(headers: dict[str, str]) -> None:
    with pytest.raises(WebhookVerificationError):
        verify_webhook(BODY, headers, secret=SECRET)


def test_garbage_signatures_fail_cleanly() -> None:
    headers = signed()
    headers["webhook-signature"] = "v1,@@@ v1a,!!! nonsense"
    with pytest.raises(WebhookVerificationError):
        verify_webhook(BODY, headers, secret=SECRET)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(BODY, headers, public_key=PUBLIC_B64)


def test_needs_a_secret_or_a_key() -> None:
    with pytest.raises(ValueError):
        verify_webhook(BODY, signed())
