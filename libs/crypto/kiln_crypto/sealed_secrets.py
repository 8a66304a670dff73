"""Secrets Kiln must keep usable, sealed with keys the operator provides.

A webhook signing secret (`whsec_…`) is symmetric: the notifier needs it in clear to sign each
delivery, so it cannot be hashed like an API key secret. Wherever Kiln stores or sends one (the
gateway's and the notifier's tables, the gateway's outbox, `webhooks.endpoint_changed`) it
holds it sealed with the operator's keyring instead: `KILN_SECRETS_KEYS`, a comma-separated
list of Fernet keys (url-safe base64 of 32 random bytes), the same for the gateway and the
notifier.

Sealing is Fernet (AES-128-CBC with HMAC-SHA256, a random IV per token) through
`cryptography`'s MultiFernet: the first key seals, every key listed opens, and `reseal` seals
again with the first key. That makes rotation a matter of configuration and one command per
service, with no downtime (docs/deploy.md, "Rotating the secrets key"):
list a new key last, then first, re-seal what is stored, then drop the old key.
"""

from __future__ import annotations

import binascii
from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

__all__ = [
    "SealedSecretError",
    "SecretsKeyError",
    "SecretsKeyring",
    "new_secrets_key",
    "parse_secrets_keys",
]

_SETTING = "KILN_SECRETS_KEYS"


class SecretsKeyError(ValueError):
    """The keyring setting is empty or holds something that is not a Fernet key. The message
    never quotes a key."""


class SealedSecretError(ValueError):
    """A sealed secret that no key of the keyring opens (tampered with, or sealed with a key
    that is no longer listed)."""


def new_secrets_key() -> str:
    """A new random key for `KILN_SECRETS_KEYS`."""
    return Fernet.generate_key().decode("ascii")


def parse_secrets_keys(value: str) -> list[str]:
    """The keys of a `KILN_SECRETS_KEYS` value, first (sealing) key first; blanks around the
    commas are ignored. Raises SecretsKeyError for an empty list or a malformed key."""
    keys = [part.strip() for part in value.split(",") if part.strip()]
    if not keys:
        raise SecretsKeyError(
            f"{_SETTING} is not set: Kiln seals webhook signing secrets with it. Make a key with "
            '`python -c "from cryptography.fernet import Fernet; '
            'print(Fernet.generate_key().decode())"`'
        )
    for index, key in enumerate(keys, start=1):
        try:
            Fernet(key)
        except (ValueError, binascii.Error):
            raise SecretsKeyError(
                f"key {index} of {_SETTING} is not a Fernet key (url-safe base64 of 32 bytes)"
            ) from None
    return keys


class SecretsKeyring:
    """Seals and opens secrets with the operator's keys (the first one seals)."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise SecretsKeyError(f"{_SETTING} lists no key")
        self._first = Fernet(keys[0])
        self._all = MultiFernet([Fernet(key) for key in keys])
        self.key_count = len(keys)

    @classmethod
    def from_setting(cls, value: str) -> SecretsKeyring:
        """The keyring of a `KILN_SECRETS_KEYS` value (SecretsKeyError when it is unusable)."""
        return cls(parse_secrets_keys(value))

    def seal(self, secret: str) -> str:
        """`secret` sealed with the first key: an ASCII token, different at every call."""
        return self._all.encrypt(secret.encode("utf-8")).decode("ascii")

    def open(self, sealed: str) -> str:
        """The secret inside `sealed`, with whichever listed key sealed it."""
        try:
            return self._all.decrypt(sealed.encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError) as exc:
            raise SealedSecretError(
                f"no key of {_SETTING} opens this sealed secret (tampered with, or sealed with "
                "a key no longer listed)"
            ) from exc

    def reseal(self, sealed: str) -> str:
        """`sealed` sealed again with the first key (its secret unchanged)."""
        try:
            return self._all.rotate(sealed.encode("ascii")).decode("ascii")
        except (InvalidToken, UnicodeError) as exc:
            raise SealedSecretError(
                f"no key of {_SETTING} opens this sealed secret, so it cannot be sealed again"
            ) from exc

    def sealed_with_first_key(self, sealed: str) -> bool:
        """Whether the first key opens `sealed` (False: an older key, or none, sealed it)."""
        try:
            self._first.decrypt(sealed.encode("ascii"))
        except (InvalidToken, UnicodeError):
            return False
        return True
