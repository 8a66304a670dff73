"""Streaming result encryption and decryption (kiln-hpke-v1)."""

from __future__ import annotations

import base64
import io
import json
from dataclasses import replace
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kiln_crypto import (
    DEFAULT_CHUNK_SIZE,
    SCHEME,
    ResultDecryptionError,
    ResultEncryption,
    ResultEncryptor,
    decrypt_bytes,
    decrypt_stream,
    encrypt_bytes,
    make_result_key,
    open_file_key,
)

SECRET = "sk_live_s3cret-for-tests"
JOB_ID = "job_01HZX4T6Q2V9K8"
KEY_ID = "key_abc123"
SMALL = 64
RECORD = 12 + SMALL + 16
MATERIAL = make_result_key(SECRET)


def payload(n: int) -> bytes:
    return bytes((i * 131 + 7) % 256 for i in range(n))


def encrypt(
    data: bytes, *, job_id: str = JOB_ID, chunk_size: int = SMALL
) -> tuple[bytes, ResultEncryption]:
    return encrypt_bytes(data, job_id, MATERIAL.public_key, KEY_ID, MATERIAL.salt, chunk_size)


def decrypt(blob: bytes, encryption: ResultEncryption, **kw: Any) -> bytes:
    return decrypt_bytes(
        blob,
        secret=kw.get("secret", SECRET),
        job_id=kw.get("job_id", JOB_ID),
        encryption=encryption,
    )


def records(blob: bytes, record_size: int = RECORD) -> list[bytes]:
    return [blob[i : i + record_size] for i in range(0, len(blob), record_size)]


def n_chunks(size: int, chunk_size: int) -> int:
    return max(1, -(-size // chunk_size))


# --- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, SMALL - 1, SMALL, SMALL + 1, 2 * SMALL, 3 * SMALL + 5])
def test_round_trip_small_chunks(size: int) -> None:
    data = payload(size)
    blob, encryption = encrypt(data)
    chunks = n_chunks(size, SMALL)
    assert len(blob) == size + chunks * 28
    assert encryption.chunk_size == SMALL
    assert decrypt(blob, encryption) == data


@pytest.mark.parametrize(
    "size", [0, DEFAULT_CHUNK_SIZE - 1, DEFAULT_CHUNK_SIZE, DEFAULT_CHUNK_SIZE + 1]
)
def test_round_trip_default_1mib_chunks(size: int) -> None:
    data = payload(size)
    blob, encryption = encrypt_bytes(data, JOB_ID, MATERIAL.public_key, KEY_ID, MATERIAL.salt)
    assert encryption.chunk_size == DEFAULT_CHUNK_SIZE == 1024 * 1024
    assert len(blob) == size + n_chunks(size, DEFAULT_CHUNK_SIZE) * 28
    assert decrypt(blob, encryption) == data


def test_streaming_api_round_trip() -> None:
    data = payload(3 * SMALL + 5)
    encryptor = ResultEncryptor(JOB_ID, MATERIAL.public_key, KEY_ID, MATERIAL.salt, SMALL)
    out = io.BytesIO()
    written = encryptor.encrypt_stream(io.BytesIO(data), out)
    assert written == len(out.getvalue()) == len(data) + 4 * 28
    plain = io.BytesIO()
    count = decrypt_stream(
        io.BytesIO(out.getvalue()),
        plain,
        secret=SECRET,
        job_id=JOB_ID,
        encryption=encryptor.encryption,
    )
    assert count == len(data)
    assert plain.getvalue() == data


def test_empty_input_is_one_empty_last_chunk() -> None:
    blob, encryption = encrypt(b"")
    assert len(blob) == 28
    file_key = open_file_key(SECRET, encryption, JOB_ID)
    aad = JOB_ID.encode() + (0).to_bytes(4, "big") + b"\x01"
    assert AESGCM(file_key).decrypt(blob[:12], blob[12:], aad) == b""


def test_chunk_format_matches_spec() -> None:
    data = payload(2 * SMALL + 3)
    blob, encryption = encrypt(data)
    file_key = open_file_key(SECRET, encryption, JOB_ID)
    assert len(file_key) == 32
    parts = records(blob)
    assert [len(p) for p in parts] == [RECORD, RECORD, 12 + 3 + 16]
    aead = AESGCM(file_key)
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        aad = JOB_ID.encode() + index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")
        plain = aead.decrypt(part[:12], part[12:], aad)
        assert plain == data[index * SMALL : (index + 1) * SMALL]


def test_encryptions_differ() -> None:
    data = payload(3 * SMALL)
    blob1, enc1 = encrypt(data)
    blob2, enc2 = encrypt(data)
    assert blob1 != blob2
    assert enc1.sealed_key != enc2.sealed_key
    assert open_file_key(SECRET, enc1, JOB_ID) != open_file_key(SECRET, enc2, JOB_ID)
    nonces = [r[:12] for r in records(blob1) + records(blob2)]
    assert len(set(nonces)) == len(nonces)
    assert decrypt(blob1, enc1) == decrypt(blob2, enc2) == data


def test_same_chunk_content_gives_different_ciphertexts() -> None:
    blob, _ = encrypt(b"\x00" * (3 * SMALL))
    parts = records(blob)
    assert len({p[12:] for p in parts}) == 3


class SpyReader(io.RawIOBase):
    """Returns at most ``step`` bytes per read and records the sizes asked for."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = data
        self._pos = 0
        self._step = step
        self.asked: list[int] = []

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        self.asked.append(size)
        if size < 0:
            size = len(self._data)
        n = min(size, self._step)
        chunk = self._data[self._pos : self._pos + n]
        self._pos += len(chunk)
        return chunk


class SpyWriter(io.RawIOBase):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.writes: list[int] = []

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self.writes.append(len(data))
        self.buf += data
        return len(data)


@pytest.mark.parametrize("step", [1, 7, SMALL, 10_000])
def test_streams_read_bounded_and_cope_with_short_reads(step: int) -> None:
    data = payload(5 * SMALL + 9)
    encryptor = ResultEncryptor(JOB_ID, MATERIAL.public_key, KEY_ID, MATERIAL.salt, SMALL)
    reader, writer = SpyReader(data, step), SpyWriter()
    encryptor.encrypt_stream(reader, writer)  # type: ignore[arg-type]
    assert reader.asked and all(0 < n <= SMALL for n in reader.asked)
    assert all(n <= SMALL + 16 for n in writer.writes)

    blob_reader, plain_writer = SpyReader(bytes(writer.buf), step), SpyWriter()
    decrypt_stream(
        blob_reader,  # type: ignore[arg-type]
        plain_writer,  # type: ignore[arg-type]
        secret=SECRET,
        job_id=JOB_ID,
        encryption=encryptor.encryption,
    )
    assert all(0 < n <= RECORD for n in blob_reader.asked)
    assert all(n <= SMALL for n in plain_writer.writes)
    assert bytes(plain_writer.buf) == data


def test_encryptor_is_single_use() -> None:
    encryptor = ResultEncryptor(JOB_ID, MATERIAL.public_key, KEY_ID, MATERIAL.salt, SMALL)
    encryptor.encrypt_stream(io.BytesIO(b"abc"), io.BytesIO())
    with pytest.raises(RuntimeError):
        encryptor.encrypt_stream(io.BytesIO(b"abc"), io.BytesIO())


def test_encryptor_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError):
        ResultEncryptor(JOB_ID, b"\x00" * 31, KEY_ID, MATERIAL.salt)
    with pytest.raises(ValueError):
        ResultEncryptor(JOB_ID, MATERIAL.public_key, KEY_ID, b"short")
    with pytest.raises(ValueError):
        ResultEncryptor(JOB_ID, MATERIAL.public_key, KEY_ID, MATERIAL.salt, 0)
    with pytest.raises(ValueError):
        ResultEncryptor("", MATERIAL.public_key, KEY_ID, MATERIAL.salt)


# --- the result.encryption object -------------------------------------------------------------


def test_to_json_shape_and_round_trip() -> None:
    _, encryption = encrypt(b"data")
    doc = encryption.to_json()
    assert list(doc) == ["scheme", "key_id", "salt", "sealed_key", "chunk_size"]
    assert doc["scheme"] == SCHEME == "kiln-hpke-v1"
    assert doc["key_id"] == KEY_ID
    assert base64.b64decode(doc["salt"], validate=True) == MATERIAL.salt
    assert len(base64.b64decode(doc["sealed_key"], validate=True)) == 32 + 32 + 16
    assert doc["chunk_size"] == SMALL
    assert ResultEncryption.from_json(json.loads(json.dumps(doc))) == encryption


@pytest.mark.parametrize(
    "change",
    [
        {"scheme": "kiln-hpke-v2"},
        {"salt": "not base64!"},
        {"salt": base64.b64encode(b"x" * 15).decode()},
        {"sealed_key": base64.b64encode(b"x" * 79).decode()},
        {"sealed_key": 12},
        {"chunk_size": 0},
        {"chunk_size": "64"},
        {"chunk_size": True},
        {"chunk_size": 2**40},
        {"key_id": None},
    ],
)
def test_from_json_rejects_malformed(change: dict[str, Any]) -> None:
    _, encryption = encrypt(b"data")
    doc = {**encryption.to_json(), **change}
    with pytest.raises(ResultDecryptionError):
        ResultEncryption.from_json(doc)


def test_from_json_rejects_missing_field() -> None:
    _, encryption = encrypt(b"data")
    doc = encryption.to_json()
    del doc["sealed_key"]
    with pytest.raises(ResultDecryptionError, match="sealed_key"):
        ResultEncryption.from_json(doc)


# --- failure modes ---------------------------------------------------------------------------

DATA = payload(3 * SMALL + 5)


@pytest.fixture(scope="module")
def sample() -> tuple[bytes, ResultEncryption]:
    return encrypt(DATA)


def test_every_tampered_byte_fails(sample: tuple[bytes, ResultEncryption]) -> None:
    blob, encryption = sample
    for position in range(len(blob)):
        tampered = bytearray(blob)
        tampered[position] ^= 0x01
        with pytest.raises(ResultDecryptionError):
            decrypt(bytes(tampered), encryption)


def test_every_truncation_fails(sample: tuple[bytes, ResultEncryption]) -> None:
    blob, encryption = sample
    for length in range(len(blob)):
        with pytest.raises(ResultDecryptionError):
            decrypt(blob[:length], encryption)


def test_missing_last_chunk_fails(sample: tuple[bytes, ResultEncryption]) -> None:
    blob, encryption = sample
    parts = records(blob)
    with pytest.raises(ResultDecryptionError):
        decrypt(b"".join(parts[:-1]), encryption)


def test_exact_multiple_missing_last_full_chunk_fails() -> None:
    blob, encryption = encrypt(payload(3 * SMALL))
    assert len(records(blob)) == 3
    with pytest.raises(ResultDecryptionError):
        decrypt(blob[: 2 * RECORD], encryption)


def test_dropped_chunk_fails(sample: tuple[bytes, ResultEncryption]) -> None:
    blob, encryption = sample
    parts = records(blob)
    for drop in range(len(parts)):
        with pytest.raises(ResultDecryptionError):
            decrypt(b"".join(parts[:drop] + parts[drop + 1 :]), encryption)


def test_reordered_chunks_fail(sample: tuple[bytes, ResultEncryption]) -> None:
    blob, encryption = sample
    parts = records(blob)
    swapped = [parts[1], parts[0], *parts[2:]]
    with pytest.raises(ResultDecryptionError):
        decrypt(b"".join(swapped), encryption)
    full = [parts[0], parts[2], parts[1], parts[3]]
    with pytest.raises(ResultDecryptionError):
        decrypt(b"".join(full), encryption)


def test_duplicated_chunk_fails(sample: tuple[bytes, ResultEncryption]) -> None:
    blob, encryption = sample
    parts = records(blob)
    with pytest.raises(ResultDecryptionError):
        decrypt(b"".join([parts[0], *parts]), encryption)


@pytest.mark.parametrize("extra", [b"\x00", b"x" * 28, b"x" * RECORD])
def test_trailing_bytes_fail(sample: tuple[bytes, ResultEncryption], extra: bytes) -> None:
    blob, encryption = sample
    with pytest.raises(ResultDecryptionError):
        decrypt(blob + extra, encryption)


def test_trailing_copy_of_last_chunk_fails(sample: tuple[bytes, ResultEncryption]) -> None:
    blob, encryption = sample
    with pytest.raises(ResultDecryptionError):
        decrypt(blob + records(blob)[-1], encryption)


def test_empty_blob_fails(sample: tuple[bytes, ResultEncryption]) -> None:
    _, encryption = sample
    with pytest.raises(ResultDecryptionError):
        decrypt(b"", encryption)


def test_wrong_job_id_fails(sample: tuple[bytes, ResultEncryption]) -> None:
    blob, encryption = sample
    with pytest.raises(ResultDecryptionError):
        decrypt(blob, encryption, job_id=JOB_ID + "x")
    with pytest.raises(ResultDecryptionError):
        open_file_key(SECRET, encryption, "job_other")


def test_wrong_secret_fails(sample: tuple[bytes, ResultEncryption]) -> None:
    blob, encryption = sample
    with pytest.raises(ResultDecryptionError):
        decrypt(blob, encryption, secret=SECRET + "x")
    with pytest.raises(ResultDecryptionError):
        open_file_key("", encryption, JOB_ID)


def test_chunks_bound_to_their_job() -> None:
    """Even with the file key in hand, chunks cannot move to another job's result."""
    blob, encryption = encrypt(DATA)
    file_key = open_file_key(SECRET, encryption, JOB_ID)
    parts = records(blob)
    index, last = 0, False
    other_aad = b"job_other" + index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")
    with pytest.raises(InvalidTag):
        AESGCM(file_key).decrypt(parts[0][:12], parts[0][12:], other_aad)


def test_chunk_from_another_result_fails(sample: tuple[bytes, ResultEncryption]) -> None:
    blob, encryption = sample
    other_blob, _ = encrypt(DATA)
    parts, other = records(blob), records(other_blob)
    with pytest.raises(ResultDecryptionError):
        decrypt(b"".join([other[0], *parts[1:]]), encryption)


@pytest.mark.parametrize("field", ["salt", "sealed_key"])
def test_tampered_metadata_fails(sample: tuple[bytes, ResultEncryption], field: str) -> None:
    blob, encryption = sample
    value = bytearray(getattr(encryption, field))
    for position in range(len(value)):
        value[position] ^= 0x80
        if field == "salt":
            changed = replace(encryption, salt=bytes(value))
        else:
            changed = replace(encryption, sealed_key=bytes(value))
        with pytest.raises(ResultDecryptionError):
            decrypt(blob, changed)
        value[position] ^= 0x80


def test_sealed_key_from_another_result_fails(sample: tuple[bytes, ResultEncryption]) -> None:
    blob, encryption = sample
    _, other = encrypt(DATA)
    with pytest.raises(ResultDecryptionError):
        decrypt(blob, replace(encryption, sealed_key=other.sealed_key))


@pytest.mark.parametrize("chunk_size", [SMALL - 1, SMALL + 1, 2 * SMALL, DEFAULT_CHUNK_SIZE])
def test_wrong_chunk_size_fails(sample: tuple[bytes, ResultEncryption], chunk_size: int) -> None:
    blob, encryption = sample
    with pytest.raises(ResultDecryptionError):
        decrypt(blob, replace(encryption, chunk_size=chunk_size))


def test_failure_never_returns_partial_plaintext(sample: tuple[bytes, ResultEncryption]) -> None:
    blob, encryption = sample
    truncated = b"".join(records(blob)[:2])
    out = io.BytesIO()
    with pytest.raises(ResultDecryptionError):
        decrypt_stream(
            io.BytesIO(truncated), out, secret=SECRET, job_id=JOB_ID, encryption=encryption
        )
    # whatever reached ``out`` before the error is an authenticated prefix, never junk
    assert DATA.startswith(out.getvalue())


def test_errors_are_value_errors_not_invalid_tag(sample: tuple[bytes, ResultEncryption]) -> None:
    blob, encryption = sample
    with pytest.raises(ResultDecryptionError) as info:
        decrypt(blob[:-1], encryption)
    assert isinstance(info.value, ValueError)
    assert info.value.__cause__ is None
