"""The notifier does not start without the operator's keyring (KILN_SECRETS_KEYS), whose
error never quotes a key, and keeps the keyring out of its settings' repr."""

from pathlib import Path

import pytest
from pydantic import SecretStr

from kiln_crypto import SecretsKeyError, new_secrets_key
from kiln_notifier.app import create_app
from kiln_notifier.config import NotifierSettings


def settings(tmp_path: Path, keys: str) -> NotifierSettings:
    return NotifierSettings(database_url=f"sqlite:///{tmp_path}/n.db", secrets_keys=SecretStr(keys))


def test_the_notifier_does_not_start_without_a_keyring(tmp_path: Path) -> None:
    with pytest.raises(SecretsKeyError, match="KILN_SECRETS_KEYS is not set"):
        create_app(settings(tmp_path, ""))
    bad = "not-a-fernet-key-" * 3
    with pytest.raises(SecretsKeyError, match="key 2 of KILN_SECRETS_KEYS") as raised:
        create_app(settings(tmp_path, f"{new_secrets_key()},{bad}"))
    assert bad not in str(raised.value)
    create_app(settings(tmp_path, new_secrets_key()))


def test_the_keyring_is_not_in_the_settings_repr(tmp_path: Path) -> None:
    keys = new_secrets_key()
    assert keys not in repr(settings(tmp_path, keys))
