"""Result blobs: a small interface with a local-directory store (the default) and an
S3-compatible store (AWS S3, MinIO, Ceph RGW, …) for production, chosen by configuration.

Every store writes atomically (a reader never sees half a blob), streams in both directions
(no blob is held whole in memory) and refuses keys that could escape their root.
"""

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from kiln_runtime.settings import ServiceSettings

CHUNK = 1024 * 1024


class BlobStore(Protocol):
    def write(self, key: str, source: BinaryIO) -> int: ...
    def open(self, key: str) -> BinaryIO: ...
    def size(self, key: str) -> int | None: ...
    def delete(self, key: str) -> None: ...


def check_key(key: str) -> str:
    if not key or key.startswith("/") or ".." in key.split("/") or "\\" in key or "\x00" in key:
        raise ValueError(f"bad blob key {key!r}")
    return key


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def write(self, key: str, source: BinaryIO) -> int:
        """Write atomically: readers never see a half-written blob."""
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        with tmp.open("wb") as out:
            shutil.copyfileobj(source, out, length=CHUNK)
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(target)
        return target.stat().st_size

    def open(self, key: str) -> BinaryIO:
        return self._path(key).open("rb")

    def size(self, key: str) -> int | None:
        path = self._path(key)
        return path.stat().st_size if path.exists() else None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


class _S3Body:
    """A botocore StreamingBody as a closeable, readable file object."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def read(self, size: int = -1) -> bytes:
        data: bytes = self._body.read(None if size < 0 else size)
        return data

    def close(self) -> None:
        self._body.close()

    def __enter__(self) -> "_S3Body":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class S3BlobStore:
    """Blobs in one bucket of an S3-compatible service, under an optional key prefix.

    Writes go through boto3's managed transfer (multipart above ``multipart_threshold``, so a
    blob is visible only once complete); reads stream the object body. Credentials come from
    boto3's usual chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, profiles, instance roles).
    """

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        client: Any | None = None,
        multipart_threshold: int = 8 * CHUNK,
    ) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        if not bucket:
            raise ValueError("an S3 blob store needs a bucket")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._client = client or boto3.client(
            "s3",
            endpoint_url=endpoint_url or None,
            region_name=region or None,
            config=Config(retries={"max_attempts": 5, "mode": "standard"}),
        )
        self._transfer = TransferConfig(
            multipart_threshold=multipart_threshold, multipart_chunksize=multipart_threshold
        )

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def write(self, key: str, source: BinaryIO) -> int:
        name = self._key(key)
        self._client.upload_fileobj(source, self.bucket, name, Config=self._transfer)
        size = self.size(key)
        if size is None:
            raise OSError(f"s3://{self.bucket}/{name} is missing right after its upload")
        return size

    def open(self, key: str) -> BinaryIO:
        from botocore.exceptions import ClientError

        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _not_found(exc):
                raise FileNotFoundError(key) from None
            raise
        return _S3Body(response["Body"])  # type: ignore[return-value]

    def size(self, key: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            head = self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _not_found(exc):
                return None
            raise
        return int(head["ContentLength"])

    def delete(self, key: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=self._key(key))


def _not_found(exc: Any) -> bool:
    error = exc.response.get("Error", {})
    return str(error.get("Code")) in ("404", "NoSuchKey", "NotFound")


def make_blob_store(
    backend: str,
    *,
    local_dir: Path,
    s3_bucket: str = "",
    s3_prefix: str = "",
    s3_endpoint_url: str = "",
    s3_region: str = "",
) -> BlobStore:
    """The store a service's settings name: ``local`` (a directory) or ``s3``."""
    if backend == "local":
        return LocalBlobStore(local_dir)
    if backend == "s3":
        return S3BlobStore(
            s3_bucket,
            prefix=s3_prefix,
            endpoint_url=s3_endpoint_url or None,
            region=s3_region or None,
        )
    raise ValueError(f"unknown blob store backend {backend!r} (local or s3)")


def iter_chunks(stream: BinaryIO, chunk_size: int = 256 * 1024) -> Iterator[bytes]:
    with stream:
        while chunk := stream.read(chunk_size):
            yield chunk


def blob_store_for(settings: ServiceSettings) -> BlobStore:
    """The blob store a service's settings name (the same for inference and the gateway)."""
    return make_blob_store(
        settings.blob_backend,
        local_dir=settings.blob_dir,
        s3_bucket=settings.s3_bucket,
        s3_prefix=settings.s3_prefix,
        s3_endpoint_url=settings.s3_endpoint_url,
        s3_region=settings.s3_region,
    )
