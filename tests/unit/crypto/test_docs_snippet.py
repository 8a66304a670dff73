"""Run the standalone decryption snippet of docs/decrypt.md against real blobs."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag

from kiln_crypto import ResultEncryptor, make_result_key

DOC = Path(__file__).resolve().parents[3] / "docs" / "decrypt.md"
MARKER = "<!-- decrypt-snippet"
SECRET = "sk_live_docs-snippet"
JOB_ID = "job_docs_01"
SMALL = 64

DecryptResult = Callable[[str, str, dict[str, Any], str, str], None]


def snippet_source() -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index(MARKER)
    match = re.compile(r"```python\n(.*?)```", re.S).search(text, start)
    assert match is not None, "no python block after the decrypt-snippet marker"
    return match.group(1)


@pytest.fixture(scope="module")
def decrypt_result() -> DecryptResult:
    source = snippet_source()
    assert "kiln_crypto" not in source  # the snippet must stand alone
    namespace: dict[str, Any] = {"__name__": "decrypt_snippet"}
    exec(compile(source, str(DOC), "exec"), namespace)
    function: DecryptResult = namespace["decrypt_result"]
    return function


def test_snippet_is_short() -> None:
    lines = [line for line in snippet_source().splitlines() if line.strip()]
    assert len(lines) <= 30


def make_blob(tmp_path: Path, data: bytes, chunk_size: int) -> tuple[Path, dict[str, Any]]:
    material = make_result_key(SECRET)
    encryptor = ResultEncryptor(JOB_ID, material.public_key, "key_docs", material.salt, chunk_size)
    blob_path = tmp_path / "result.bin"
    with blob_path.open("wb") as out:
        encryptor.encrypt_stream(io.BytesIO(data), out)
    # the encryption object as a client sees it: parsed from the JSON job object
    encryption: dict[str, Any] = json.loads(json.dumps(encryptor.encryption.to_json()))
    return blob_path, encryption


@pytest.mark.parametrize(
    ("size", "chunk_size"),
    [(0, SMALL), (1, SMALL), (SMALL, SMALL), (3 * SMALL + 5, SMALL), (1024 * 1024 + 3, 1 << 20)],
)
def test_snippet_decrypts(
    decrypt_result: DecryptResult, tmp_path: Path, size: int, chunk_size: int
) -> None:
    data = bytes((i * 31 + 3) % 256 for i in range(size))
    blob_path, encryption = make_blob(tmp_path, data, chunk_size)
    out_path = tmp_path / "result.png"
    decrypt_result(SECRET, JOB_ID, encryption, str(blob_path), str(out_path))
    assert out_path.read_bytes() == data
    assert not (tmp_path / "result.png.part").exists()


@pytest.mark.parametrize("damage", ["flip", "truncate", "drop_last", "trailing", "job", "secret"])
def test_snippet_refuses_bad_input(
    decrypt_result: DecryptResult, tmp_path: Path, damage: str
) -> None:
    data = bytes(range(256)) * 2
    blob_path, encryption = make_blob(tmp_path, data, SMALL)
    blob = blob_path.read_bytes()
    secret, job_id = SECRET, JOB_ID
    if damage == "flip":
        blob = blob[:100] + bytes([blob[100] ^ 1]) + blob[101:]
    elif damage == "truncate":
        blob = blob[:-5]
    elif damage == "drop_last":
        blob = blob[: -(12 + SMALL + 16)]
    elif damage == "trailing":
        blob = blob + b"\x00"
    elif damage == "job":
        job_id = "job_docs_02"
    else:
        secret = SECRET + "x"
    blob_path.write_bytes(blob)
    out_path = tmp_path / "result.png"
    with pytest.raises((InvalidTag, ValueError)):  # as docs/decrypt.md promises
        decrypt_result(secret, job_id, encryption, str(blob_path), str(out_path))
    assert not out_path.exists()
