"""API key decisions: secrets, their hashes, and a new key's row.

A key's secret is shown once, when the key is made; only its SHA-256 is stored, with the
`kiln-hpke-v1` salt and public key derived from it (docs/architecture.md, "Result encryption").
"""

import hashlib
import secrets
from datetime import UTC, datetime

from kiln_crypto import make_result_key
from kiln_gateway.ids import new_id
from kiln_gateway.tables import ApiKey

API_KEY_PREFIXES = ("sk_live_", "sk_test_")


def new_api_secret(sandbox: bool) -> str:
    return ("sk_test_" if sandbox else "sk_live_") + secrets.token_urlsafe(32)


def secret_sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_api_key(account_id: str, name: str, sandbox: bool) -> tuple[ApiKey, str]:
    """A new key row and its secret (which the caller shows once and never stores)."""
    secret = new_api_secret(sandbox)
    material = make_result_key(secret)
    key = ApiKey(
        id=new_id("key"),
        account_id=account_id,
        name=name,
        prefix=secret[:12],
        secret_sha256=secret_sha256(secret),
        sandbox=sandbox,
        result_salt=material.salt,
        result_public_key=material.public_key,
        created_at=datetime.now(UTC),
    )
    return key, secret
