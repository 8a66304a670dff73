"""The stack's secrets: made once per stack folder (secrets.env), then reused by every `up`."""

from __future__ import annotations

import base64
import secrets

from kiln_stack.envfiles import read_env_file, write_env_file
from kiln_stack.layout import StackLayout

SECRET_NAMES = (
    "KILN_ADMIN_TOKEN",
    "KILN_FILES_SIGNING_KEY",
    "KILN_SESSION_SIGNING_KEY",
    # The platform's Ed25519 private key for `v1a` webhook signatures (gateway and notifier).
    "KILN_WEBHOOK_SIGNING_KEY",
    # The keyring that seals stored webhook secrets (gateway and notifier): one Fernet key.
    "KILN_SECRETS_KEYS",
    # The password of the role `kiln` of a stack on PostgreSQL (postgres.py).
    "KILN_POSTGRES_PASSWORD",
)


def new_secret(name: str) -> str:
    if name == "KILN_WEBHOOK_SIGNING_KEY":
        # Ed25519 private key: standard base64 of 32 random bytes.
        return base64.b64encode(secrets.token_bytes(32)).decode()
    if name == "KILN_SECRETS_KEYS":
        # A Fernet key: url-safe base64 of 32 random bytes (what Fernet.generate_key makes).
        return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    return secrets.token_urlsafe(32)


class SecretsMixin(StackLayout):
    def secrets(self) -> dict[str, str]:
        """The admin token, the signing keys and the database password: made once, then read
        from secrets.env."""
        values = read_env_file(self.secrets_file)
        changed = False
        for key in SECRET_NAMES:
            if not values.get(key):
                values[key] = new_secret(key)
                changed = True
        if changed:
            write_env_file(
                self.secrets_file,
                {k: values[k] for k in SECRET_NAMES},
                header=["Kiln local stack: made once by deploy/local/stack.py, reused by `up`."],
            )
        return values
