"""Decrypting job results (scheme ``kiln-hpke-v1``; docs/decrypt.md describes the format).

- The X25519 result key is ``HKDF-SHA256(ikm=API secret, salt, info="kiln/result-key/v1")``.
- ``sealed_key`` opens with HPKE (RFC 9180 base mode, X25519 / HKDF-SHA256 / AES-256-GCM,
  ``info = "kiln/result/v1:" + job id``) to the 32-byte file key.
- The blob is records ``nonce(12) || AES-256-GCM ciphertext || tag(16)``, one per chunk of
  ``chunk_size`` plaintext bytes, with associated data ``job id || index (4 bytes, big-endian)
  || 0x01 for the last chunk else 0x00``.

:class:`ChunkDecryptor` takes the blob in pieces of any size (as a download delivers it) and
holds at most one record plus one piece, so results of any size decrypt in constant memory.
A record is known not to be the last one as soon as one more byte follows it.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kiln_client.errors import DecryptionError

__all__ = [
    "SCHEME",
    "ChunkDecryptor",
    "Encryption",
    "decrypt_bytes",
    "decrypt_file",
    "decrypt_stream",
    "open_file_key",
]

SCHEME = "kiln-hpke-v1"
RESULT_KEY_INFO = b"kiln/result-key/v1"
RESULT_INFO_PREFIX = b"kiln/result/v1:"
SALT_SIZE = 16
FILE_KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
SEALED_KEY_SIZE = 32 + FILE_KEY_SIZE + TAG_SIZE
MAX_CHUNK_SIZE = 64 * 1024 * 1024  # hostile metadata must not make us buffer gigabytes
_MAX_CHUNKS = 2**32
_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


def _b64(value: object, name: str) -> bytes:
    if not isinstance(value, str):
        raise DecryptionError(f"result.encryption.{name} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise DecryptionError(f"result.encryption.{name} is not valid base64") from None


@dataclass(frozen=True)
class Encryption:
    """A result's ``encryption`` object: everything but the API secret needed to decrypt."""

    scheme: str
    key_id: str
    salt: bytes
    sealed_key: bytes
    chunk_size: int

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Encryption:
        """Parse and check ``result.encryption``; anything malformed is a DecryptionError."""
        if not isinstance(data, Mapping):
            raise DecryptionError("result.encryption must be an object")
        missing = [
            k for k in ("scheme", "key_id", "salt", "sealed_key", "chunk_size") if k not in data
        ]
        if missing:
            raise DecryptionError(f"result.encryption lacks {', '.join(missing)}")
        if data["scheme"] != SCHEME:
            raise DecryptionError(f"unsupported encryption scheme {data['scheme']!r}")
        salt = _b64(data["salt"], "salt")
        sealed_key = _b64(data["sealed_key"], "sealed_key")
        chunk_size = data["chunk_size"]
        if len(salt) != SALT_SIZE:
            raise DecryptionError(f"result.encryption.salt must be {SALT_SIZE} bytes")
        if len(sealed_key) != SEALED_KEY_SIZE:
            raise DecryptionError(f"result.encryption.sealed_key must be {SEALED_KEY_SIZE} bytes")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
            raise DecryptionError("result.encryption.chunk_size must be an integer")
        if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
            raise DecryptionError(f"result.encryption.chunk_size {chunk_size} is out of range")
        if not isinstance(data["key_id"], str):
            raise DecryptionError("result.encryption.key_id must be a string")
        return cls(SCHEME, data["key_id"], salt, sealed_key, chunk_size)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scheme": self.scheme,
            "key_id": self.key_id,
            "salt": base64.b64encode(self.salt).decode("ascii"),
            "sealed_key": base64.b64encode(self.sealed_key).decode("ascii"),
            "chunk_size": self.chunk_size,
        }


def _as_encryption(encryption: Encryption | Mapping[str, Any]) -> Encryption:
    return encryption if isinstance(encryption, Encryption) else Encryption.from_dict(encryption)


def derive_private_key(secret: str, salt: bytes) -> X25519PrivateKey:
    """The X25519 result key of an API secret and its key's salt."""
    raw = HKDF(hashes.SHA256(), length=32, salt=salt, info=RESULT_KEY_INFO).derive(
        secret.encode("utf-8")
    )
    return X25519PrivateKey.from_private_bytes(raw)


def open_file_key(secret: str, job_id: str, encryption: Encryption | Mapping[str, Any]) -> bytes:
    """Open the result's file key; a wrong secret or job id fails here already."""
    enc = _as_encryption(encryption)
    private_key = derive_private_key(secret, enc.salt)
    try:
        file_key = _SUITE.decrypt(
            enc.sealed_key, private_key, info=RESULT_INFO_PREFIX + job_id.encode("utf-8")
        )
    except (InvalidTag, ValueError):
        raise DecryptionError(
            f"cannot open the file key of {job_id}: wrong API secret (the result was sealed "
            f"to key {enc.key_id}), wrong job id, or altered metadata"
        ) from None
    if len(file_key) != FILE_KEY_SIZE:
        raise DecryptionError("the sealed file key has the wrong length")
    return file_key


class ChunkDecryptor:
    """Incremental decryption of one blob: ``feed()`` pieces, then ``finish()``.

    Each call returns the plaintext that has authenticated so far. Truncation is detected only
    by ``finish()``: whoever consumes the plaintext early must discard it if a later call
    raises.
    """

    def __init__(self, secret: str, job_id: str, encryption: Encryption | Mapping[str, Any]):
        enc = _as_encryption(encryption)
        self._aead = AESGCM(open_file_key(secret, job_id, enc))
        self._job_id = job_id.encode("utf-8")
        self._record_size = NONCE_SIZE + enc.chunk_size + TAG_SIZE
        self._buffer = bytearray()
        self._index = 0
        self._finished = False

    def _open(self, record: bytes | bytearray, last: bool) -> bytes:
        if self._index >= _MAX_CHUNKS:
            raise DecryptionError("the blob has too many chunks")
        aad = self._job_id + self._index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")
        try:
            plain = self._aead.decrypt(bytes(record[:NONCE_SIZE]), bytes(record[NONCE_SIZE:]), aad)
        except InvalidTag:
            raise DecryptionError(
                f"chunk {self._index} failed authentication: the blob is altered, truncated, "
                "reordered, has trailing data or belongs to another job"
            ) from None
        self._index += 1
        return plain

    def feed(self, data: bytes) -> bytes:
        if self._finished:
            raise DecryptionError("the decryptor is finished")
        self._buffer += data
        out = bytearray()
        # Only a record followed by at least one more byte is surely not the last one.
        while len(self._buffer) > self._record_size:
            out += self._open(self._buffer[: self._record_size], last=False)
            del self._buffer[: self._record_size]
        return bytes(out)

    def finish(self) -> bytes:
        if self._finished:
            raise DecryptionError("the decryptor is finished")
        self._finished = True
        if len(self._buffer) < NONCE_SIZE + TAG_SIZE:
            raise DecryptionError(f"chunk {self._index} is truncated (the blob is incomplete)")
        plain = self._open(self._buffer, last=True)
        self._buffer.clear()
        return plain


def decrypt_iter(
    pieces: Iterable[bytes], *, secret: str, job_id: str, encryption: Encryption | Mapping[str, Any]
) -> Iterator[bytes]:
    """Plaintext pieces of a blob given in pieces (see :class:`ChunkDecryptor`)."""
    decryptor = ChunkDecryptor(secret, job_id, encryption)
    for piece in pieces:
        plain = decryptor.feed(piece)
        if plain:
            yield plain
    yield decryptor.finish()


def decrypt_stream(
    blob: BinaryIO,
    out: BinaryIO,
    *,
    secret: str,
    job_id: str,
    encryption: Encryption | Mapping[str, Any],
    read_size: int = 256 * 1024,
) -> int:
    """Decrypt ``blob`` into ``out``; returns the plaintext size. On an error whatever was
    written to ``out`` must be discarded (:func:`decrypt_file` does that for files)."""
    written = 0
    pieces = iter(lambda: blob.read(read_size), b"")
    for plain in decrypt_iter(pieces, secret=secret, job_id=job_id, encryption=encryption):
        out.write(plain)
        written += len(plain)
    return written


def decrypt_bytes(
    blob: bytes, *, secret: str, job_id: str, encryption: Encryption | Mapping[str, Any]
) -> bytes:
    """The plaintext of an in-memory blob, only if all of it authenticates."""
    return b"".join(decrypt_iter([blob], secret=secret, job_id=job_id, encryption=encryption))


def write_atomically(path: str | os.PathLike[str], pieces: Iterable[bytes]) -> Path:
    """Write ``pieces`` to a temporary file beside ``path`` and give it the name only when
    all of them came; on any error the temporary file is removed and ``path`` is untouched."""
    target = Path(path)
    # Made with open(): unlike mkstemp's 0600, the result gets the mode the umask gives.
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(6)}.part")
    out = open(temporary, "xb")  # before the try: a name we did not make is never removed
    try:
        with out:
            for piece in pieces:
                out.write(piece)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def decrypt_file(
    blob_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    secret: str,
    job_id: str,
    encryption: Encryption | Mapping[str, Any],
    read_size: int = 256 * 1024,
) -> Path:
    """Decrypt a downloaded blob file into ``out_path``; no partial output on failure."""
    enc = _as_encryption(encryption)
    with open(blob_path, "rb") as blob:
        pieces = iter(lambda: blob.read(read_size), b"")
        return write_atomically(
            out_path, decrypt_iter(pieces, secret=secret, job_id=job_id, encryption=enc)
        )
