"""job.result.save/read/iter_bytes: download (mocked) and decrypt what kiln_crypto made;
no file at all when the blob fails authentication or the download breaks off for good."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import httpx
import pytest
import respx

from kiln_client import (
    APIConnectionError,
    AsyncJob,
    AsyncKiln,
    DecryptionError,
    Job,
    Kiln,
    MissingCredentials,
)
from kiln_crypto import encrypt_bytes, make_result_key
from tests.unit.client.conftest import KEY, job_json

FILE_URL = "https://files.kiln.test/api/v1/files/tok123"
PLAIN = os.urandom(3 * 1024 * 1024 + 17)  # four 1 MiB chunks
MATERIAL = make_result_key(KEY)
JOB_ID = job_json()["id"]
BLOB, ENCRYPTION = encrypt_bytes(PLAIN, JOB_ID, MATERIAL.public_key, "key_1", MATERIAL.salt)


def completed(kiln: Kiln) -> Job:
    result = {
        "url": FILE_URL,
        "expires_at": "2026-11-22T09:14:00Z",
        "content_type": "image/png",
        "size_bytes": len(BLOB),
        "encryption": ENCRYPTION.to_json(),
    }
    return Job.from_dict(job_json("completed", result=result), http=kiln._http, secret=kiln.api_key)


def pieces(blob: bytes, size: int = 65536) -> Iterator[bytes]:
    for i in range(0, len(blob), size):
        yield blob[i : i + size]


def test_save_read_and_iterate(kiln: Kiln, api: respx.MockRouter, tmp_path: Path) -> None:
    download = api.get(FILE_URL).mock(
        side_effect=lambda request: httpx.Response(200, content=pieces(BLOB))
    )
    job = completed(kiln)
    assert job.result is not None
    path = job.result.save(tmp_path / "out.png")
    assert path.read_bytes() == PLAIN
    assert job.result.read() == PLAIN
    assert b"".join(job.result.iter_bytes()) == PLAIN
    # The signed URL is the credential: the API key is not sent along.
    assert "Authorization" not in download.calls.last.request.headers
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_a_tampered_blob_leaves_no_file(kiln: Kiln, api: respx.MockRouter, tmp_path: Path) -> None:
    tampered = bytearray(BLOB)
    tampered[-5] ^= 1  # the last chunk: earlier ones decrypt and are written first
    api.get(FILE_URL).mock(return_value=httpx.Response(200, content=bytes(tampered)))
    target = tmp_path / "out.png"
    target.write_bytes(b"previous result")
    job = completed(kiln)
    assert job.result is not None
    with pytest.raises(DecryptionError):
        job.result.save(target)
    assert target.read_bytes() == b"previous result"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_a_truncated_download_leaves_no_file(
    kiln: Kiln, api: respx.MockRouter, tmp_path: Path
) -> None:
    api.get(FILE_URL).mock(return_value=httpx.Response(200, content=BLOB[: len(BLOB) // 2]))
    job = completed(kiln)
    assert job.result is not None
    with pytest.raises(DecryptionError):
        job.result.save(tmp_path / "out.png")
    assert list(tmp_path.iterdir()) == []


def test_a_download_that_breaks_off_is_restarted(
    kiln: Kiln, api: respx.MockRouter, tmp_path: Path
) -> None:
    def breaks() -> Iterator[bytes]:
        yield BLOB[:100_000]
        raise httpx.ReadError("connection reset")

    route = api.get(FILE_URL).mock(
        side_effect=[
            httpx.Response(200, content=breaks()),
            httpx.Response(200, content=pieces(BLOB)),
        ]
    )
    job = completed(kiln)
    assert job.result is not None
    assert job.result.save(tmp_path / "out.png").read_bytes() == PLAIN
    assert route.calls.call_count == 2
    api.reset()
    api.get(FILE_URL).mock(side_effect=lambda request: httpx.Response(200, content=breaks()))
    with pytest.raises(APIConnectionError):
        job.result.save(tmp_path / "again.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_the_wrong_secret(kiln: Kiln, api: respx.MockRouter, tmp_path: Path) -> None:
    api.get(FILE_URL).mock(return_value=httpx.Response(200, content=BLOB))
    job = completed(kiln)
    assert job.result is not None
    with pytest.raises(DecryptionError, match="key_1"):
        job.result.save(tmp_path / "out.png", secret="sk_test_someone_else")
    assert list(tmp_path.iterdir()) == []


def test_an_unbound_result_needs_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KILN_API_KEY", raising=False)
    job = Job.from_dict(completed(Kiln(KEY, base_url="https://kiln.test")).raw)
    assert job.result is not None
    with pytest.raises(MissingCredentials):
        job.result.read()


async def test_async_save(akiln: AsyncKiln, api: respx.MockRouter, tmp_path: Path) -> None:
    async def apieces() -> AsyncIterator[bytes]:
        for piece in pieces(BLOB):
            yield piece

    api.get(FILE_URL).mock(side_effect=lambda request: httpx.Response(200, content=apieces()))
    job = AsyncJob.from_dict(
        completed(Kiln(KEY, base_url="https://kiln.test")).raw,
        http=akiln._http,
        secret=akiln.api_key,
    )
    assert job.result is not None
    saved = await job.result.save(tmp_path / "out.png")
    assert await anyio.Path(saved).read_bytes() == PLAIN
    assert await job.result.read() == PLAIN
    api.reset()
    api.get(FILE_URL).mock(return_value=httpx.Response(200, content=BLOB[:-1]))
    with pytest.raises(DecryptionError):
        await job.result.save(tmp_path / "bad.png")
    assert sorted([p.name async for p in anyio.Path(tmp_path).iterdir()]) == ["out.png"]
    await akiln.close()
