"""Deliveries are signed so that any Standard Webhooks receiver library verifies them."""

import base64
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from kiln_notifier.deliveries import encode_payload, webhook_payload
from kiln_notifier.sender import InvalidSecret, signature_headers

SECRET = "whsec_" + base64.b64encode(b"k" * 24).decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"o" * 24).decode()
BODY = encode_payload(
    webhook_payload(
        "job.completed",
        datetime(2025, 6, 12, 9, 14, 19, tzinfo=UTC),
        {"id": "job-1", "status": "completed", "input": {"prompt": "café ☕"}},
    )
)


def headers(secret: str = SECRET, at: datetime | None = None) -> dict[str, str]:
    return signature_headers(
        webhook_id="a9d3f6e2-1b7c-4e58-9f0a-6c2b8d4e7f13",
        timestamp=at or datetime.now(UTC),
        body=BODY,
        secret=secret,
    )


def test_signed_delivery_verifies_with_the_standard_library() -> None:
    signed = headers()
    assert signed["webhook-id"] == "a9d3f6e2-1b7c-4e58-9f0a-6c2b8d4e7f13"
    assert signed["webhook-signature"].startswith("v1,")
    # The receiver gets the UTF-8 bytes that were sent.
    assert Webhook(SECRET).verify(BODY.encode("utf-8"), signed) == json.loads(BODY)


def test_header_names_are_case_insensitive_for_receivers() -> None:
    signed = {name.title(): value for name, value in headers().items()}
    assert Webhook(SECRET).verify(BODY, signed) == json.loads(BODY)


def test_timestamp_is_unix_seconds_in_utc_whatever_the_zone() -> None:
    at = datetime.now(timezone(timedelta(hours=5)))
    signed = headers(at=at)
    assert signed["webhook-timestamp"] == str(int(at.timestamp()))
    Webhook(SECRET).verify(BODY, signed)


def test_other_secret_or_changed_body_fails() -> None:
    signed = headers()
    with pytest.raises(WebhookVerificationError):
        Webhook(OTHER_SECRET).verify(BODY, signed)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(BODY.replace("completed", "failed"), signed)


def test_stale_signature_is_refused_by_receivers() -> None:
    signed = headers(at=datetime.now(UTC) - timedelta(minutes=10))
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(BODY, signed)


@pytest.mark.parametrize("secret", ["", "whsec_", "whsec_not base64!"])
def test_invalid_secret_is_a_typed_error(secret: str) -> None:
    with pytest.raises(InvalidSecret):
        headers(secret=secret)
