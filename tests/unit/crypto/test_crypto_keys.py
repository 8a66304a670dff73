"""Result key derivation (kiln-hpke-v1)."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kiln_crypto import (
    RESULT_KEY_INFO,
    SALT_SIZE,
    ResultKeyMaterial,
    derive_result_private_key,
    derive_result_public_key,
    make_result_key,
)

SECRET = "sk_live_0123456789abcdef"


def test_info_constant() -> None:
    assert RESULT_KEY_INFO == b"kiln/result-key/v1"


def test_make_result_key_shape() -> None:
    material = make_result_key(SECRET)
    assert isinstance(material, ResultKeyMaterial)
    assert isinstance(material.salt, bytes) and len(material.salt) == SALT_SIZE == 16
    assert isinstance(material.public_key, bytes) and len(material.public_key) == 32


def test_derived_public_key_matches() -> None:
    material = make_result_key(SECRET)
    private_key = derive_result_private_key(SECRET, material.salt)
    assert private_key.public_key().public_bytes_raw() == material.public_key
    assert derive_result_public_key(SECRET, material.salt) == material.public_key


def test_derivation_is_hkdf_sha256_as_specified() -> None:
    salt = bytes(range(16))
    raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=b"kiln/result-key/v1").derive(
        SECRET.encode("utf-8")
    )
    expected = X25519PrivateKey.from_private_bytes(raw).public_key().public_bytes_raw()
    assert derive_result_public_key(SECRET, salt) == expected


def test_derivation_is_deterministic() -> None:
    salt = b"\x07" * 16
    first = derive_result_private_key(SECRET, salt).private_bytes_raw()
    assert derive_result_private_key(SECRET, salt).private_bytes_raw() == first


def test_salts_are_random_and_matter() -> None:
    first, second = make_result_key(SECRET), make_result_key(SECRET)
    assert first.salt != second.salt
    assert first.public_key != second.public_key


def test_secret_matters() -> None:
    salt = b"\x01" * 16
    assert derive_result_public_key(SECRET, salt) != derive_result_public_key(SECRET + "x", salt)


def test_non_ascii_secret_is_utf8() -> None:
    salt = b"\x02" * 16
    raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=RESULT_KEY_INFO).derive(
        "clé-π".encode()
    )
    assert derive_result_private_key("clé-π", salt).private_bytes_raw() == (
        X25519PrivateKey.from_private_bytes(raw).private_bytes_raw()
    )
