"""The blob store contract, on the local directory store and on an S3-compatible server."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln_runtime.blobs import BlobStore, LocalBlobStore, S3BlobStore, iter_chunks, make_blob_store
from tests.integration.inference.conftest import S3Server

pytestmark = pytest.mark.integration


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    if request.param == "local":
        yield LocalBlobStore(tmp_path / "blobs")
    else:
        server: S3Server = request.getfixturevalue("s3_server")
        # a small multipart threshold, so the 3 MiB blob below goes up in parts
        yield S3BlobStore(
            server.new_bucket(),
            prefix="kiln/",
            endpoint_url=server.endpoint_url,
            region="us-east-1",
            multipart_threshold=1024 * 1024 * 5,
        )


def test_write_open_size_delete(store: BlobStore) -> None:
    assert store.size("results/a/job_1") is None
    assert store.write("results/a/job_1", io.BytesIO(b"hello")) == 5
    assert store.size("results/a/job_1") == 5
    with store.open("results/a/job_1") as blob:
        assert blob.read() == b"hello"
    store.write("results/a/job_1", io.BytesIO(b"replaced"))  # overwrite is whole
    assert b"".join(iter_chunks(store.open("results/a/job_1"))) == b"replaced"
    store.delete("results/a/job_1")
    assert store.size("results/a/job_1") is None
    store.delete("results/a/job_1")  # deleting what is gone is fine


def test_empty_blob(store: BlobStore) -> None:
    assert store.write("results/a/empty", io.BytesIO(b"")) == 0
    assert store.size("results/a/empty") == 0
    assert b"".join(iter_chunks(store.open("results/a/empty"))) == b""


def test_large_blob_streams_in_chunks(store: BlobStore) -> None:
    data = hashlib.sha256(b"seed").digest() * (12 * 1024 * 1024 // 32 + 7)  # ~12 MiB
    assert store.write("results/a/big", io.BytesIO(data)) == len(data)
    chunks = list(iter_chunks(store.open("results/a/big"), chunk_size=256 * 1024))
    assert max(len(c) for c in chunks) <= 256 * 1024
    assert b"".join(chunks) == data


def test_missing_blob_cannot_be_opened(store: BlobStore) -> None:
    with pytest.raises(FileNotFoundError):
        store.open("results/a/nothing")


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "..", "a\\b", "a\x00b"])
def test_bad_keys_are_refused(store: BlobStore, key: str) -> None:
    with pytest.raises(ValueError):
        store.write(key, io.BytesIO(b"x"))
    with pytest.raises(ValueError):
        store.size(key)


def test_make_blob_store(tmp_path: Path, s3_server: S3Server) -> None:
    assert isinstance(make_blob_store("local", local_dir=tmp_path), LocalBlobStore)
    s3 = make_blob_store(
        "s3",
        local_dir=tmp_path,
        s3_bucket=s3_server.new_bucket(),
        s3_endpoint_url=s3_server.endpoint_url,
        s3_region="us-east-1",
    )
    assert isinstance(s3, S3BlobStore)
    s3.write("k", io.BytesIO(b"1"))
    assert s3.size("k") == 1
    with pytest.raises(ValueError):
        make_blob_store("ftp", local_dir=tmp_path)
