"""The gateway's webhook secrets: it does not start without the operator's keyring, never puts a
secret in clear into what it announces, and opens an account's default secret (or says it
cannot) without ever quoting a key."""

from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import SecretStr

from kiln_crypto import SecretsKeyError, SecretsKeyring, new_secrets_key
from kiln_gateway.admin.service import new_account
from kiln_gateway.app import create_app
from kiln_gateway.config import GatewaySettings
from kiln_gateway.errors import Unavailable
from kiln_gateway.tables import WebhookEndpoint
from kiln_gateway.webhooks.service import (
    account_webhook_secret,
    default_endpoint_changed,
    endpoint_changed,
    new_sealed_webhook_secret,
)

KEYRING = SecretsKeyring([new_secrets_key()])


def settings(tmp_path: Path, keys: str) -> GatewaySettings:
    return GatewaySettings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/g.db", secrets_keys=SecretStr(keys)
    )


def test_the_gateway_does_not_start_without_a_keyring(tmp_path: Path) -> None:
    with pytest.raises(SecretsKeyError, match="KILN_SECRETS_KEYS is not set"):
        create_app(settings(tmp_path, ""))
    bad = "not-a-fernet-key-" * 3
    with pytest.raises(SecretsKeyError, match="key 1 of KILN_SECRETS_KEYS") as raised:
        create_app(settings(tmp_path, bad))
    assert bad not in str(raised.value)


def test_the_keyring_setting_is_not_in_the_settings_repr(tmp_path: Path) -> None:
    keys = new_secrets_key()
    assert keys not in repr(settings(tmp_path, keys))


def test_a_new_secret_is_shown_once_and_kept_sealed() -> None:
    secret, sealed = new_sealed_webhook_secret(KEYRING)
    assert secret.startswith("whsec_") and secret not in sealed
    assert KEYRING.open(sealed) == secret


def test_what_the_notifier_is_told_carries_the_secret_sealed_only() -> None:
    secret, sealed = new_sealed_webhook_secret(KEYRING)
    now = datetime.now(UTC)
    endpoint = WebhookEndpoint(
        id="we_1",
        account_id="acct_1",
        url="https://example.com/h",
        sealed_secret=sealed,
        legacy_secret="",
        event_types=[],
        created_at=now,
        updated_at=now,
        revision=1,
    )
    for message in (endpoint_changed(endpoint), default_endpoint_changed("acct_1", sealed)):
        raw = message.SerializeToString()
        assert secret.encode() not in raw and secret.removeprefix("whsec_").encode() not in raw
        assert not message.secret and KEYRING.open(message.sealed_secret) == secret


def test_the_default_secret_opens_or_is_unavailable() -> None:
    account = new_account("ada@example.com", "Ada", "hash", KEYRING)
    assert account.legacy_default_webhook_secret == ""
    secret = account_webhook_secret(account, KEYRING)
    assert (
        secret.startswith("whsec_") and KEYRING.open(account.sealed_webhook_secret or "") == secret
    )
    with pytest.raises(Unavailable):
        account_webhook_secret(account, SecretsKeyring([new_secrets_key()]))
    # An account a replica of the release before sealed secrets made: its secret in clear.
    account.sealed_webhook_secret = None
    account.legacy_default_webhook_secret = "whsec_clear"
    assert account_webhook_secret(account, KEYRING) == "whsec_clear"
