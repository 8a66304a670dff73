"""A body over the limit gets a 413 that the common clients can read, over real HTTP.

urllib, requests and httpx all send the whole body before they read the answer. A server
that answers early and closes while body bytes are still arriving makes the kernel reset the
connection, and the client reports "connection reset" (or a broken pipe) instead of the 413:
that is what urllib, which always sends `Connection: close`, saw until the gateway learnt to
read and drop the rest of a refused body first (hostile_input.py). Each client here sends an
oversized body, declared or chunked, kept-alive or `Connection: close`, to the gateway app
served by uvicorn with each of its HTTP implementations, and reads the 413 in the envelope.
"""

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import requests

from tests.unit.gateway.hostile_support import ServedGateway

pytestmark = pytest.mark.integration

MAX_BODY_BYTES = 1024 * 1024
# Five times the limit: far more than the socket buffers hold, so an early close resets.
OVERSIZED = json.dumps(
    {"model": "kiln/prompt-to-image", "input": {"prompt": "a" * (5 * MAX_BODY_BYTES)}}
).encode()
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module", params=["httptools", "h11"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    gateway = ServedGateway(
        tmp_path_factory.mktemp(f"oversized-{request.param}"),
        http=request.param,
        max_body_bytes=MAX_BODY_BYTES,
    )
    gateway.start()
    try:
        assert gateway.wait_started(60), f"the gateway did not start: {gateway.error!r}"
        yield gateway.origin
    finally:
        gateway.stop()


def chunks(body: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


Answer = tuple[int, dict[str, str], bytes]


def with_urllib(url: str, body: bytes, chunked: bool, headers: dict[str, str]) -> Answer:
    # urllib sends `Connection: close` on every request; an iterable body goes chunked.
    data: Any = chunks(body) if chunked else body
    request = urllib.request.Request(url, data=data, headers={**JSON, **headers}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def with_requests(url: str, body: bytes, chunked: bool, headers: dict[str, str]) -> Answer:
    data: Any = chunks(body) if chunked else body
    response = requests.post(url, data=data, headers={**JSON, **headers}, timeout=60)
    return response.status_code, dict(response.headers), response.content


def with_httpx(url: str, body: bytes, chunked: bool, headers: dict[str, str]) -> Answer:
    content: Any = chunks(body) if chunked else body
    response = httpx.post(url, content=content, headers={**JSON, **headers}, timeout=60)
    return response.status_code, dict(response.headers), response.content


CLIENTS: dict[str, Callable[[str, bytes, bool, dict[str, str]], Answer]] = {
    "urllib": with_urllib,
    "requests": with_requests,
    "httpx": with_httpx,
}


def assert_error(answer: Answer, status: int, code: str) -> None:
    got_status, headers, body = answer
    assert got_status == status, body[:300]
    lowered = {name.lower(): value for name, value in headers.items()}
    assert lowered["content-type"].startswith("application/json")
    error = json.loads(body)["error"]
    assert error["code"] == code
    assert error["request_id"] == lowered["x-request-id"]


@pytest.mark.parametrize("client", list(CLIENTS))
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("connection", ["keep-alive", "close"])
def test_every_client_reads_the_413(
    served: str, client: str, chunked: bool, connection: str
) -> None:
    headers = {"Connection": "close"} if connection == "close" else {}
    answer = CLIENTS[client](f"{served}/api/v1/jobs", OVERSIZED, chunked, headers)
    assert_error(answer, 413, "PAYLOAD_TOO_LARGE")
    # The server is none the worse for it.
    assert httpx.get(f"{served}/api/v1/models", timeout=30).status_code == 401


@pytest.mark.parametrize("client", list(CLIENTS))
def test_a_refusal_before_the_body_is_readable_too(served: str, client: str) -> None:
    """`%00` in the path is refused before the body is read; the body is still drained."""
    answer = CLIENTS[client](f"{served}/api/v1/jobs/%00/cancel", OVERSIZED, False, {})
    assert_error(answer, 404, "NOT_FOUND")


def test_a_client_waiting_for_100_continue_gets_the_413_without_sending(served: str) -> None:
    host, port = served.removeprefix("http://").split(":")
    head = (
        "POST /api/v1/jobs HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(OVERSIZED)}\r\n"
        "Expect: 100-continue\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(head.encode())
        received = b""
        while b"\r\n\r\n" not in received:
            data = sock.recv(65536)
            if not data:
                break
            received += data
    status_line, _, rest = received.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 413"), received[:300]
    assert b"connection: close" in rest.lower()
