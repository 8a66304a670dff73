"""The client's own kiln-hpke-v1 decryption against what the server's kiln_crypto encrypts:
every size around the chunk boundaries, blobs fed in pieces of every size, and every way a blob
can be altered (the same cases as tests/unit/crypto, seen from the client)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from kiln_client import DecryptionError, Encryption, decrypt_bytes, decrypt_file
from kiln_client.decryption import ChunkDecryptor
from kiln_crypto import encrypt_bytes, make_result_key

SECRET = "sk_live_s3cret-for-client-tests"
JOB_ID = "job_0123456789abcdef0123456789abcdef"
KEY_ID = "key_client"
SMALL = 64
RECORD = 12 + SMALL + 16
MATERIAL = make_result_key(SECRET)


def payload(n: int) -> bytes:
    return bytes((i * 131 + 7) % 256 for i in range(n))


def encrypt(
    data: bytes, *, job_id: str = JOB_ID, chunk_size: int = SMALL
) -> tuple[bytes, dict[str, Any]]:
    blob, encryption = encrypt_bytes(
        data, job_id, MATERIAL.public_key, KEY_ID, MATERIAL.salt, chunk_size
    )
    return blob, encryption.to_json()  # what the API shows as result.encryption


def decrypt(blob: bytes, encryption: dict[str, Any], **kw: Any) -> bytes:
    return decrypt_bytes(
        blob,
        secret=kw.get("secret", SECRET),
        job_id=kw.get("job_id", JOB_ID),
        encryption=encryption,
    )


@pytest.mark.parametrize("size", [0, 1, SMALL - 1, SMALL, SMALL + 1, 2 * SMALL, 5 * SMALL + 3])
def test_decrypts_what_the_server_encrypts(size: int) -> None:
    data = payload(size)
    blob, encryption = encrypt(data)
    assert decrypt(blob, encryption) == data


def test_default_1mib_chunks() -> None:
    data = os.urandom(2 * 1024 * 1024 + 5)
    blob, encryption = encrypt(data, chunk_size=1024 * 1024)
    assert encryption["chunk_size"] == 1024 * 1024
    assert decrypt(blob, encryption) == data


@pytest.mark.parametrize("piece", [1, 7, RECORD - 1, RECORD, RECORD + 1, 1000])
def test_pieces_of_any_size(piece: int) -> None:
    data = payload(4 * SMALL + 9)
    blob, encryption = encrypt(data)
    decryptor = ChunkDecryptor(SECRET, JOB_ID, encryption)
    out = b"".join(decryptor.feed(blob[i : i + piece]) for i in range(0, len(blob), piece))
    out += decryptor.finish()
    assert out == data


def test_holds_at_most_one_record_plus_a_piece() -> None:
    blob, encryption = encrypt(payload(20 * SMALL))
    decryptor = ChunkDecryptor(SECRET, JOB_ID, encryption)
    for i in range(0, len(blob), 50):
        decryptor.feed(blob[i : i + 50])
        assert len(decryptor._buffer) <= RECORD + 50
    decryptor.finish()


@pytest.fixture
def sample() -> tuple[bytes, dict[str, Any]]:
    return encrypt(payload(3 * SMALL + 10))


def test_every_tampered_byte_fails(sample: tuple[bytes, dict[str, Any]]) -> None:
    blob, encryption = sample
    for i in range(0, len(blob), 7):
        altered = bytearray(blob)
        altered[i] ^= 0x01
        with pytest.raises(DecryptionError):
            decrypt(bytes(altered), encryption)


def test_every_truncation_fails(sample: tuple[bytes, dict[str, Any]]) -> None:
    blob, encryption = sample
    for cut in range(0, len(blob), 5):
        with pytest.raises(DecryptionError):
            decrypt(blob[:cut], encryption)


def test_truncation_at_a_record_boundary_fails() -> None:
    blob, encryption = encrypt(payload(3 * SMALL))  # exact multiple: the last record is full
    with pytest.raises(DecryptionError):
        decrypt(blob[: 2 * RECORD], encryption)


@pytest.mark.parametrize("extra", [b"\x00", b"x" * 28, b"y" * RECORD])
def test_trailing_bytes_fail(sample: tuple[bytes, dict[str, Any]], extra: bytes) -> None:
    blob, encryption = sample
    with pytest.raises(DecryptionError):
        decrypt(blob + extra, encryption)


def test_reordered_and_dropped_chunks_fail(sample: tuple[bytes, dict[str, Any]]) -> None:
    blob, encryption = sample
    records = [blob[i : i + RECORD] for i in range(0, len(blob), RECORD)]
    with pytest.raises(DecryptionError):
        decrypt(records[1] + records[0] + b"".join(records[2:]), encryption)
    with pytest.raises(DecryptionError):
        decrypt(records[0] + b"".join(records[2:]), encryption)


def test_wrong_secret_and_wrong_job_fail(sample: tuple[bytes, dict[str, Any]]) -> None:
    blob, encryption = sample
    with pytest.raises(DecryptionError, match="file key"):
        decrypt(blob, encryption, secret=SECRET + "x")
    with pytest.raises(DecryptionError, match="file key"):
        decrypt(blob, encryption, job_id="job_" + "f" * 32)


def test_a_chunk_from_another_job_fails() -> None:
    data = payload(2 * SMALL + 1)
    blob, encryption = encrypt(data)
    other_blob, _ = encrypt(data, job_id="job_" + "e" * 32)
    spliced = blob[:RECORD] + other_blob[RECORD : 2 * RECORD] + blob[2 * RECORD :]
    with pytest.raises(DecryptionError):
        decrypt(spliced, encryption)


@pytest.mark.parametrize(
    "change",
    [
        {"scheme": "kiln-hpke-v2"},
        {"salt": "not base64!"},
        {"salt": "AAAA"},
        {"sealed_key": "AAAA"},
        {"chunk_size": 0},
        {"chunk_size": "64"},
        {"chunk_size": True},
        {"chunk_size": 2**40},
        {"key_id": 5},
    ],
)
def test_malformed_metadata_is_refused(
    sample: tuple[bytes, dict[str, Any]], change: dict[str, Any]
) -> None:
    blob, encryption = sample
    with pytest.raises(DecryptionError):
        decrypt(blob, {**encryption, **change})


def test_missing_metadata_field_is_refused(sample: tuple[bytes, dict[str, Any]]) -> None:
    blob, encryption = sample
    del encryption["salt"]
    with pytest.raises(DecryptionError, match="salt"):
        decrypt(blob, encryption)


def test_encryption_round_trips_through_its_dict(sample: tuple[bytes, dict[str, Any]]) -> None:
    _, encryption = sample
    assert Encryption.from_dict(encryption).to_dict() == encryption


def test_decrypt_file_leaves_no_partial_output(tmp_path: Path) -> None:
    data = payload(5 * SMALL)
    blob, encryption = encrypt(data)
    good, bad = tmp_path / "good.bin", tmp_path / "bad.bin"
    good.write_bytes(blob)
    bad.write_bytes(blob[:-1])
    out = decrypt_file(
        good, tmp_path / "out.png", secret=SECRET, job_id=JOB_ID, encryption=encryption
    )
    assert out.read_bytes() == data
    with pytest.raises(DecryptionError):
        decrypt_file(
            bad, tmp_path / "broken.png", secret=SECRET, job_id=JOB_ID, encryption=encryption
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.bin", "good.bin", "out.png"]
