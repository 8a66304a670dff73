"""Pin ``sealed_key`` to RFC 9180 independently of ``cryptography``'s HPKE module.

The file key is opened here by a from-the-RFC implementation of HPKE base mode
(DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM) built from plain primitives, so a change
of suite, mode, ``info`` or wire layout (``enc || ciphertext``) in the library or in our use of
it cannot go unnoticed: clients in other languages rely on exactly this.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from kiln_crypto import (
    ResultEncryptor,
    derive_result_private_key,
    make_result_key,
    open_file_key,
)

SECRET = "sk_test_rfc9180"
JOB_ID = "job_rfc_9180_ü"

KEM_ID, KDF_ID, AEAD_ID = 0x0020, 0x0001, 0x0002  # X25519, HKDF-SHA256, AES-256-GCM
KEM_SUITE = b"KEM" + KEM_ID.to_bytes(2, "big")
HPKE_SUITE = b"HPKE" + b"".join(i.to_bytes(2, "big") for i in (KEM_ID, KDF_ID, AEAD_ID))


def extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt or bytes(32), ikm, hashlib.sha256).digest()


def expand(prk: bytes, info: bytes, length: int) -> bytes:
    return HKDFExpand(hashes.SHA256(), length, info).derive(prk)


def labeled_extract(suite: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return extract(salt, b"HPKE-v1" + suite + label + ikm)


def labeled_expand(suite: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    labeled_info = length.to_bytes(2, "big") + b"HPKE-v1" + suite + label + info
    return expand(prk, labeled_info, length)


def rfc9180_open_base(sk: X25519PrivateKey, sealed: bytes, info: bytes) -> bytes:
    enc, ciphertext = sealed[:32], sealed[32:]
    # DHKEM Decap
    dh = sk.exchange(X25519PublicKey.from_public_bytes(enc))
    kem_context = enc + sk.public_key().public_bytes_raw()
    eae_prk = labeled_extract(KEM_SUITE, b"", b"eae_prk", dh)
    shared_secret = labeled_expand(KEM_SUITE, eae_prk, b"shared_secret", kem_context, 32)
    # KeySchedule, mode_base (0x00), default psk / psk_id
    psk_id_hash = labeled_extract(HPKE_SUITE, b"", b"psk_id_hash", b"")
    info_hash = labeled_extract(HPKE_SUITE, b"", b"info_hash", info)
    context = b"\x00" + psk_id_hash + info_hash
    secret = labeled_extract(HPKE_SUITE, shared_secret, b"secret", b"")
    key = labeled_expand(HPKE_SUITE, secret, b"key", context, 32)
    base_nonce = labeled_expand(HPKE_SUITE, secret, b"base_nonce", context, 12)
    # single-shot open: sequence number 0, empty aad
    return AESGCM(key).decrypt(base_nonce, ciphertext, b"")


def test_sealed_key_is_rfc9180_base_mode() -> None:
    material = make_result_key(SECRET)
    encryptor = ResultEncryptor(JOB_ID, material.public_key, "key_1", material.salt)
    sealed = encryptor.encryption.sealed_key
    assert len(sealed) == 32 + 32 + 16
    sk = derive_result_private_key(SECRET, material.salt)
    file_key = rfc9180_open_base(sk, sealed, b"kiln/result/v1:" + JOB_ID.encode("utf-8"))
    assert len(file_key) == 32
    assert file_key == open_file_key(SECRET, encryptor.encryption, JOB_ID)
