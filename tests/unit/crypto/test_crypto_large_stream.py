"""50 MB streaming round trip through files with bounded memory (slow: opt-in).

Skipped by default; run with ``KILN_SLOW_TESTS=1``.
"""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from pathlib import Path

import pytest

from kiln_crypto import DEFAULT_CHUNK_SIZE, ResultEncryptor, decrypt_stream, make_result_key

pytestmark = pytest.mark.skipif(
    os.environ.get("KILN_SLOW_TESTS") != "1", reason="slow; set KILN_SLOW_TESTS=1 to run"
)

SIZE = 50 * 1024 * 1024 + 17
SECRET = "sk_live_large"
JOB_ID = "job_large"


def test_50mb_stream_round_trip_bounded_memory(tmp_path: Path) -> None:
    plain_path, blob_path, out_path = (tmp_path / n for n in ("in.bin", "blob.bin", "out.bin"))
    digest = hashlib.sha256()
    with plain_path.open("wb") as f:
        for i in range(0, SIZE, DEFAULT_CHUNK_SIZE):
            block = os.urandom(min(DEFAULT_CHUNK_SIZE, SIZE - i))
            digest.update(block)
            f.write(block)
    material = make_result_key(SECRET)
    encryptor = ResultEncryptor(JOB_ID, material.public_key, "key_large", material.salt)

    tracemalloc.start()
    try:
        with plain_path.open("rb") as src, blob_path.open("wb") as dst:
            encryptor.encrypt_stream(src, dst)
        with blob_path.open("rb") as src, out_path.open("wb") as dst:
            written = decrypt_stream(
                src, dst, secret=SECRET, job_id=JOB_ID, encryption=encryptor.encryption
            )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert written == SIZE
    assert peak < 8 * DEFAULT_CHUNK_SIZE, f"peak traced memory {peak} bytes"
    check = hashlib.sha256()
    with out_path.open("rb") as f:
        while block := f.read(DEFAULT_CHUNK_SIZE):
            check.update(block)
    assert check.digest() == digest.digest()
