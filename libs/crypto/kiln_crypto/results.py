"""Result encryption, scheme ``kiln-hpke-v1`` (see docs/architecture.md, "Result encryption").

* Each result gets a random 32-byte file key. The plaintext is cut into chunks of
  ``chunk_size`` bytes (the last may be shorter; an empty result is one empty chunk) and each
  chunk becomes the record ``nonce(12, random) || AES-256-GCM ciphertext || tag(16)``, with
  associated data ``job_id (UTF-8) || chunk index (4 bytes, big-endian) || 0x01 if last else
  0x00``. The blob is the concatenation of the records, so no record can be dropped, reordered,
  truncated, appended to, or moved to another job without decryption failing.
* The file key is sealed to the API key's X25519 public key with HPKE (RFC 9180, base mode,
  DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / AES-256-GCM, single-shot, no AAD) with
  ``info = b"kiln/result/v1:" + job_id``. ``sealed_key = enc || ciphertext``.
"""

from __future__ import annotations

import base64
import binascii
import io
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, Self

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kiln_crypto.keys import SALT_SIZE, derive_result_private_key

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "FILE_KEY_SIZE",
    "MAX_CHUNK_SIZE",
    "NONCE_SIZE",
    "RESULT_INFO_PREFIX",
    "SCHEME",
    "SEALED_KEY_SIZE",
    "TAG_SIZE",
    "ResultDecryptionError",
    "ResultEncryption",
    "ResultEncryptor",
    "chunk_aad",
    "decrypt_bytes",
    "decrypt_stream",
    "encrypt_bytes",
    "open_file_key",
    "result_info",
]

SCHEME = "kiln-hpke-v1"
DEFAULT_CHUNK_SIZE = 1024 * 1024
MAX_CHUNK_SIZE = 64 * 1024 * 1024
"""Upper bound accepted for ``chunk_size``, so hostile metadata cannot force huge reads."""

RESULT_INFO_PREFIX = b"kiln/result/v1:"
FILE_KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
_ENC_SIZE = 32  # X25519 encapsulated key
SEALED_KEY_SIZE = _ENC_SIZE + FILE_KEY_SIZE + TAG_SIZE
_MAX_CHUNKS = 2**32  # the chunk index is 4 bytes

_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


class ResultDecryptionError(ValueError):
    """The result cannot be decrypted: wrong secret or job id, or tampered/truncated data."""


def result_info(job_id: str) -> bytes:
    """HPKE ``info`` binding a sealed file key to its job."""
    return RESULT_INFO_PREFIX + job_id.encode("utf-8")


def chunk_aad(job_id: str, index: int, last: bool) -> bytes:
    """Associated data of chunk ``index`` of ``job_id``'s result."""
    return job_id.encode("utf-8") + index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


def _check_chunk_size(chunk_size: int) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise ValueError("chunk_size must be an int")
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be between 1 and {MAX_CHUNK_SIZE}, got {chunk_size}")


def _b64decode(value: object, name: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"{name} is not valid base64") from exc


@dataclass(frozen=True)
class ResultEncryption:
    """The ``result.encryption`` object: everything but the secret needed to decrypt."""

    scheme: str
    key_id: str
    salt: bytes
    sealed_key: bytes
    chunk_size: int

    def __post_init__(self) -> None:
        if self.scheme != SCHEME:
            raise ValueError(f"unsupported encryption scheme {self.scheme!r}")
        if not isinstance(self.key_id, str):
            raise ValueError("key_id must be a string")
        if not isinstance(self.salt, bytes) or len(self.salt) != SALT_SIZE:
            raise ValueError(f"salt must be {SALT_SIZE} bytes")
        if not isinstance(self.sealed_key, bytes) or len(self.sealed_key) != SEALED_KEY_SIZE:
            raise ValueError(f"sealed_key must be {SEALED_KEY_SIZE} bytes")
        _check_chunk_size(self.chunk_size)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict; bytes as standard base64."""
        return {
            "scheme": self.scheme,
            "key_id": self.key_id,
            "salt": base64.b64encode(self.salt).decode("ascii"),
            "sealed_key": base64.b64encode(self.sealed_key).decode("ascii"),
            "chunk_size": self.chunk_size,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Self:
        """Parse ``result.encryption``; malformed input raises :class:`ResultDecryptionError`."""
        try:
            return cls(
                scheme=d["scheme"],
                key_id=d["key_id"],
                salt=_b64decode(d["salt"], "salt"),
                sealed_key=_b64decode(d["sealed_key"], "sealed_key"),
                chunk_size=d["chunk_size"],
            )
        except KeyError as exc:
            raise ResultDecryptionError(f"result.encryption lacks {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise ResultDecryptionError(f"invalid result.encryption: {exc}") from None


def _read_full(stream: BinaryIO, size: int) -> bytes:
    """Read ``size`` bytes, or fewer only at end of stream (copes with short reads)."""
    data = stream.read(size)
    if not data or len(data) == size:
        return data or b""
    buf = bytearray(data)
    while len(buf) < size:
        more = stream.read(size - len(buf))
        if not more:
            break
        buf += more
    return bytes(buf)


class ResultEncryptor:
    """Streaming encryptor for one job's result.

    Construction draws the file key and seals it, so :attr:`encryption` is known before any data
    is encrypted. :meth:`encrypt_stream` may be called once per encryptor.
    """

    def __init__(
        self,
        job_id: str,
        public_key: bytes,
        key_id: str,
        salt: bytes,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        if not job_id:
            raise ValueError("job_id must not be empty")
        _check_chunk_size(chunk_size)
        recipient = X25519PublicKey.from_public_bytes(public_key)
        self._job_id = job_id
        self._chunk_size = chunk_size
        self._file_key = secrets.token_bytes(FILE_KEY_SIZE)
        sealed_key = _SUITE.encrypt(self._file_key, recipient, info=result_info(job_id))
        self._encryption = ResultEncryption(
            scheme=SCHEME,
            key_id=key_id,
            salt=salt,
            sealed_key=sealed_key,
            chunk_size=chunk_size,
        )
        self._used = False

    @property
    def encryption(self) -> ResultEncryption:
        return self._encryption

    def encrypt_stream(self, plaintext: BinaryIO, out: BinaryIO) -> int:
        """Encrypt ``plaintext`` into ``out``; returns the number of bytes written.

        Reads ``chunk_size`` bytes at a time and holds at most two chunks (one read ahead, to
        know which chunk is last).
        """
        if self._used:
            raise RuntimeError("a ResultEncryptor encrypts a single result")
        self._used = True
        aead = AESGCM(self._file_key)
        size = self._chunk_size
        written = 0
        index = 0
        chunk = _read_full(plaintext, size)
        while True:
            following = _read_full(plaintext, size) if len(chunk) == size else b""
            last = not following
            if index >= _MAX_CHUNKS:
                raise ValueError("result too large for its chunk size")
            nonce = secrets.token_bytes(NONCE_SIZE)
            sealed = aead.encrypt(nonce, chunk, chunk_aad(self._job_id, index, last))
            out.write(nonce)
            out.write(sealed)
            written += NONCE_SIZE + len(sealed)
            if last:
                return written
            chunk = following
            index += 1


def encrypt_bytes(
    data: bytes,
    job_id: str,
    public_key: bytes,
    key_id: str,
    salt: bytes,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[bytes, ResultEncryption]:
    """Encrypt an in-memory result; returns ``(blob, encryption)``."""
    encryptor = ResultEncryptor(job_id, public_key, key_id, salt, chunk_size)
    out = io.BytesIO()
    encryptor.encrypt_stream(io.BytesIO(data), out)
    return out.getvalue(), encryptor.encryption


def open_file_key(secret: str, encryption: ResultEncryption, job_id: str) -> bytes:
    """Derive the result private key from ``secret`` and open the sealed file key."""
    if encryption.scheme != SCHEME:
        raise ResultDecryptionError(f"unsupported encryption scheme {encryption.scheme!r}")
    private_key = derive_result_private_key(secret, encryption.salt)
    try:
        file_key = _SUITE.decrypt(encryption.sealed_key, private_key, info=result_info(job_id))
    except (InvalidTag, ValueError):
        raise ResultDecryptionError(
            "cannot open the file key: wrong API secret, wrong job id or altered metadata"
        ) from None
    if len(file_key) != FILE_KEY_SIZE:
        raise ResultDecryptionError("sealed file key has the wrong length")
    return file_key


def _decrypt_records(
    blob: BinaryIO, out: BinaryIO, file_key: bytes, job_id: str, chunk_size: int
) -> int:
    aead = AESGCM(file_key)
    record_size = NONCE_SIZE + chunk_size + TAG_SIZE
    written = 0
    index = 0
    record = _read_full(blob, record_size)
    while True:
        following = _read_full(blob, record_size)
        last = not following
        if len(record) < NONCE_SIZE + TAG_SIZE or (not last and len(record) != record_size):
            raise ResultDecryptionError(f"chunk {index} is truncated")
        if index >= _MAX_CHUNKS:
            raise ResultDecryptionError("too many chunks")
        try:
            chunk = aead.decrypt(
                record[:NONCE_SIZE], record[NONCE_SIZE:], chunk_aad(job_id, index, last)
            )
        except InvalidTag:
            raise ResultDecryptionError(
                f"chunk {index} failed authentication: the blob is altered, truncated, "
                "reordered or has trailing data"
            ) from None
        out.write(chunk)
        written += len(chunk)
        if last:
            return written
        record = following
        index += 1


def decrypt_stream(
    blob: BinaryIO,
    out: BinaryIO,
    *,
    secret: str,
    job_id: str,
    encryption: ResultEncryption,
) -> int:
    """Decrypt ``blob`` into ``out``; returns the number of plaintext bytes written.

    Only authenticated chunks are written, but truncation is detected only at the end: if this
    raises :class:`ResultDecryptionError`, whatever was written to ``out`` must be discarded.
    """
    file_key = open_file_key(secret, encryption, job_id)
    return _decrypt_records(blob, out, file_key, job_id, encryption.chunk_size)


def decrypt_bytes(blob: bytes, *, secret: str, job_id: str, encryption: ResultEncryption) -> bytes:
    """Decrypt an in-memory blob; returns the plaintext only if all of it authenticates."""
    out = io.BytesIO()
    decrypt_stream(io.BytesIO(blob), out, secret=secret, job_id=job_id, encryption=encryption)
    return out.getvalue()
