"""Webhook decisions: secrets (made, sealed, opened), the platform's public key, an endpoint's
event filter, and what the notifier is told when an endpoint changes.

A signing secret is shown in clear once, when it is made (and the account's default one on
request); everywhere else (the tables, the outbox, `webhooks.endpoint_changed`) it is sealed with
the operator's keyring (kiln_crypto.sealed_secrets)."""

import base64
import logging
import secrets
from datetime import datetime

from kiln_contracts.v1 import webhooks_pb2
from kiln_crypto import SealedSecretError, SecretsKeyring
from kiln_gateway.errors import Unavailable
from kiln_gateway.ids import new_id
from kiln_gateway.tables import Account, WebhookEndpoint
from kiln_gateway.webhooks.schemas import EndpointCreate

log = logging.getLogger(__name__)


def new_webhook_secret() -> str:
    # Standard Webhooks secrets are standard base64 after the prefix (not URL-safe base64).
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def new_sealed_webhook_secret(keyring: SecretsKeyring) -> tuple[str, str]:
    """A new signing secret: (the secret, to show once; its sealed form, to store)."""
    secret = new_webhook_secret()
    return secret, keyring.seal(secret)


def account_webhook_secret(account: Account, keyring: SecretsKeyring) -> str:
    """The account's default secret in clear. Unavailable (503) when no key of the keyring
    opens it: KILN_SECRETS_KEYS lost the key that sealed it (the operator's to fix)."""
    if not account.sealed_webhook_secret:
        # Made by a replica of the release before sealed secrets (a rolling upgrade).
        return account.legacy_default_webhook_secret
    try:
        return keyring.open(account.sealed_webhook_secret)
    except SealedSecretError:
        log.error(
            "account %s: no key of KILN_SECRETS_KEYS opens its default webhook secret", account.id
        )
        raise Unavailable("The webhook secret cannot be read right now.") from None


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


def new_endpoint(
    account_id: str, url: str, body: EndpointCreate, keyring: SecretsKeyring, now: datetime
) -> tuple[WebhookEndpoint, str]:
    """A new endpoint of the account (its secret stored sealed only) and its secret in clear,
    for the one answer that shows it (the API's and the console's)."""
    secret, sealed = new_sealed_webhook_secret(keyring)
    endpoint = WebhookEndpoint(
        id=new_id("we"),
        account_id=account_id,
        url=url,
        sealed_secret=sealed,
        legacy_secret="",
        event_types=unique_event_types(list(body.event_types)),
        description=body.description,
        created_at=now,
        updated_at=now,
    )
    return endpoint, secret


def endpoint_changed(
    endpoint: WebhookEndpoint, *, deleted: bool = False
) -> webhooks_pb2.WebhookEndpointChanged:
    """The notifier's copy of an endpoint (`webhooks.endpoint_changed`), under the revision
    `repository.save_endpoint` gave it."""
    if not endpoint.revision:
        raise ValueError(f"endpoint {endpoint.id} has no revision: save it with save_endpoint")
    return webhooks_pb2.WebhookEndpointChanged(
        endpoint_id=endpoint.id,
        url=endpoint.url,
        # None only for an endpoint a replica of the previous release made: its own event
        # carried the secret, and the notifier keeps what it has when none is sent.
        sealed_secret=endpoint.sealed_secret or "",
        event_types=list(endpoint.event_types or []),
        deleted=deleted,
        disabled=endpoint.disabled_at is not None,
        revision=endpoint.revision,
    )


def default_endpoint_changed(
    account_id: str, sealed_secret: str
) -> webhooks_pb2.WebhookEndpointChanged:
    """The account's default secret (sealed), for deliveries to jobs' own `webhook_url`s.
    Announced once, when the account is made: its first and only revision."""
    return webhooks_pb2.WebhookEndpointChanged(
        endpoint_id=f"default_{account_id}",
        sealed_secret=sealed_secret,
        is_default=True,
        revision=1,
    )
