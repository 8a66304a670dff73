"""Webhook decisions: secrets, the platform's public key, an endpoint's event filter, and what
the notifier is told when an endpoint changes."""

import base64
import secrets

from kiln_contracts.v1 import webhooks_pb2
from kiln_gateway.tables import WebhookEndpoint


def new_webhook_secret() -> str:
    # Standard Webhooks secrets are standard base64 after the prefix (not URL-safe base64).
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def public_key_b64(private_key_text: str) -> str | None:
    """The Ed25519 public key (standard base64 of 32 bytes) of the configured private key."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    text = private_key_text.strip().replace("-", "+").replace("_", "/")
    if not text:
        return None
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        key = Ed25519PrivateKey.from_private_bytes(raw)
    except ValueError:
        return None
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(public).decode("ascii")


def unique_event_types(event_types: list[str]) -> list[str]:
    return sorted(set(event_types))


def endpoint_changed(
    endpoint: WebhookEndpoint, *, deleted: bool = False
) -> webhooks_pb2.WebhookEndpointChanged:
    """The notifier's copy of an endpoint (`webhooks.endpoint_changed`)."""
    return webhooks_pb2.WebhookEndpointChanged(
        endpoint_id=endpoint.id,
        url=endpoint.url,
        secret=endpoint.secret,
        event_types=list(endpoint.event_types or []),
        deleted=deleted,
        disabled=endpoint.disabled_at is not None,
    )


def default_endpoint_changed(account_id: str, secret: str) -> webhooks_pb2.WebhookEndpointChanged:
    """The account's default secret, for deliveries to jobs' own `webhook_url`s."""
    return webhooks_pb2.WebhookEndpointChanged(
        endpoint_id=f"default_{account_id}", secret=secret, is_default=True
    )
