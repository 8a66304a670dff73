"""Result keys: an X25519 key pair derived from an API secret (scheme ``kiln-hpke-v1``).

When an API key is made the server draws a random salt, derives the X25519 private key
``sk = HKDF-SHA256(ikm=secret, salt=salt, info="kiln/result-key/v1", length=32)``, keeps only the
public key and the salt, and forgets the secret. Only the secret's holder can re-derive ``sk``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "RESULT_KEY_INFO",
    "SALT_SIZE",
    "ResultKeyMaterial",
    "derive_result_private_key",
    "derive_result_public_key",
    "make_result_key",
]

RESULT_KEY_INFO = b"kiln/result-key/v1"
"""HKDF ``info`` for deriving the result private key from an API secret."""

SALT_SIZE = 16
"""Bytes of random salt drawn per API key."""

_X25519_KEY_SIZE = 32


def derive_result_private_key(secret: str, salt: bytes) -> X25519PrivateKey:
    """Derive the X25519 result private key from an API secret and the key's salt."""
    raw = HKDF(
        algorithm=hashes.SHA256(),
        length=_X25519_KEY_SIZE,
        salt=salt,
        info=RESULT_KEY_INFO,
    ).derive(secret.encode("utf-8"))
    return X25519PrivateKey.from_private_bytes(raw)


def derive_result_public_key(secret: str, salt: bytes) -> bytes:
    """The raw 32-byte X25519 public key that belongs to ``secret`` and ``salt``."""
    return derive_result_private_key(secret, salt).public_key().public_bytes_raw()


@dataclass(frozen=True)
class ResultKeyMaterial:
    """What the server keeps about an API key's result key: never the secret itself."""

    salt: bytes
    public_key: bytes  # raw 32-byte X25519 public key


def make_result_key(secret: str) -> ResultKeyMaterial:
    """Draw a fresh random salt and derive the public result key for ``secret``."""
    salt = secrets.token_bytes(SALT_SIZE)
    return ResultKeyMaterial(salt=salt, public_key=derive_result_public_key(secret, salt))
