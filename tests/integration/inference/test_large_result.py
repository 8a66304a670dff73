"""A 50 MB result: encrypted by the worker's code, written to the blob store (local and
S3-compatible), streamed by the gateway's /files route over real HTTP, and decrypted by the
standalone snippet of docs/decrypt.md."""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from kiln_contracts.v1 import common_pb2
from kiln_crypto import make_result_key
from kiln_gateway.deps import get_state
from kiln_gateway.files.endpoints import router as files_router
from kiln_inference.worker import store_encrypted_result
from kiln_runtime.blobs import BlobStore, LocalBlobStore, S3BlobStore
from kiln_runtime.file_tokens import FileGrant, sign_file_token
from tests.integration.inference.conftest import S3Server
from tests.stack_support import free_port

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[3] / "docs" / "decrypt.md"
SECRET = "sk_live_fifty-megabytes"
SIGNING_KEY = "test-files-signing-key"
SIZE = 50 * 1024 * 1024


def docs_snippet() -> Callable[..., None]:
    text = DOC.read_text(encoding="utf-8")
    start = text.index("<!-- decrypt-snippet")
    match = re.compile(r"```python\n(.*?)```", re.S).search(text, start)
    assert match is not None
    namespace: dict[str, Any] = {"__name__": "decrypt_snippet"}
    exec(compile(match.group(1), str(DOC), "exec"), namespace)
    function: Callable[..., None] = namespace["decrypt_result"]
    return function


def serve_files(blobs: BlobStore) -> Iterator[str]:
    app = FastAPI()
    app.include_router(files_router, prefix="/api/v1")
    state = SimpleNamespace(settings=SimpleNamespace(files_signing_key=SIGNING_KEY), blobs=blobs)
    app.dependency_overrides[get_state] = lambda: state
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/api/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(params=["local", "s3"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "local":
        return LocalBlobStore(tmp_path / "blobs")
    server: S3Server = request.getfixturevalue("s3_server")
    return S3BlobStore(server.new_bucket(), endpoint_url=server.endpoint_url, region="us-east-1")


def test_fifty_megabytes_decrypt_with_the_docs_snippet(blobs: BlobStore, tmp_path: Path) -> None:
    output = os.urandom(SIZE)
    expected = hashlib.sha256(output).hexdigest()
    material = make_result_key(SECRET)
    job_id = "job_fifty_mb"
    timings: dict[str, float] = {}

    started = time.perf_counter()
    result = store_encrypted_result(
        blobs,
        account_id="acct_big",
        job_id=job_id,
        attempt=1,
        result_key=common_pb2.ResultKey(
            key_id="key_big", public_key=material.public_key, salt=material.salt
        ),
        output=output,
        content_type="application/octet-stream",
        chunk_size=1024 * 1024,
    )
    timings["encrypt+store"] = time.perf_counter() - started
    del output
    assert result.size_bytes == SIZE + 50 * 28  # 50 chunks, each nonce + tag

    token = sign_file_token(
        FileGrant(result.blob_key, "application/octet-stream", datetime.now(UTC) + timedelta(1)),
        SIGNING_KEY,
    )
    blob_path = tmp_path / "result.bin"
    for base_url in serve_files(blobs):
        started = time.perf_counter()
        with httpx.stream("GET", f"{base_url}/files/{token}", timeout=60) as response:
            assert response.status_code == 200
            assert int(response.headers["content-length"]) == result.size_bytes
            with blob_path.open("wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
        timings["download"] = time.perf_counter() - started
    assert blob_path.stat().st_size == result.size_bytes

    import base64

    encryption = {
        "scheme": result.encryption.scheme,
        "key_id": result.encryption.key_id,
        "salt": base64.b64encode(result.encryption.salt).decode(),
        "sealed_key": base64.b64encode(result.encryption.sealed_key).decode(),
        "chunk_size": result.encryption.chunk_size,
    }
    out_path = tmp_path / "result.out"
    started = time.perf_counter()
    docs_snippet()(SECRET, job_id, encryption, str(blob_path), str(out_path))
    timings["decrypt"] = time.perf_counter() - started
    digest = hashlib.sha256()
    with out_path.open("rb") as plain:
        while block := plain.read(1024 * 1024):
            digest.update(block)
    assert digest.hexdigest() == expected
    print("50 MB result timings (s):", {k: round(v, 2) for k, v in timings.items()})
