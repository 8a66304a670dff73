"""Input images fetched through the URL guard from a real HTTP server on loopback."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from kiln_inference.inputs import FetchLimits, InputImageError, fetch_input_image
from kiln_modelhost.reference_models.image import render_image

pytestmark = pytest.mark.integration

PNG = render_image("input", 0, 64, 64)
LIMITS = FetchLimits(max_bytes=256 * 1024, max_pixels=2048 * 2048, timeout_s=1.0)


@pytest.fixture(scope="module")
def image_server() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path
            if path == "/ok.png":
                self._send(200, PNG, "image/png")
            elif path == "/big.png":  # past the cap, and says so
                self._send(200, b"\0" * (LIMITS.max_bytes + 1), "image/png")
            elif path == "/chunked-big":  # past the cap, without a length
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                block = b"\0" * 65536
                try:
                    for _ in range(LIMITS.max_bytes // len(block) + 4):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:
                    pass
            elif path == "/text":
                self._send(200, b"<html>not a picture</html>", "text/html")
            elif path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "http://169.254.169.254/latest/meta-data")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif path == "/slow":
                time.sleep(30)
                self._send(200, PNG, "image/png")
            elif path == "/broken":
                self._send(503, b"later", "text/plain")
            else:
                self._send(404, b"no", "text/plain")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except OSError:
                pass

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


async def test_fetches_a_picture(image_server: str) -> None:
    assert await fetch_input_image(f"{image_server}/ok.png", LIMITS, allow_loopback=True) == PNG


@pytest.mark.parametrize(
    ("path", "code", "retryable"),
    [
        ("/big.png", "INPUT_IMAGE_TOO_LARGE", False),
        ("/chunked-big", "INPUT_IMAGE_TOO_LARGE", False),
        ("/text", "INPUT_IMAGE_INVALID", False),
        ("/missing", "INPUT_IMAGE_INVALID", False),
        ("/redirect", "INPUT_IMAGE_REFUSED", False),
        ("/slow", "INPUT_IMAGE_UNAVAILABLE", True),
        ("/broken", "INPUT_IMAGE_UNAVAILABLE", True),
    ],
)
async def test_refusals(image_server: str, path: str, code: str, retryable: bool) -> None:
    started = time.perf_counter()
    with pytest.raises(InputImageError) as caught:
        await fetch_input_image(f"{image_server}{path}", LIMITS, allow_loopback=True)
    assert (caught.value.code, caught.value.retryable) == (code, retryable)
    # Gave up at the timeout, not when the slow server finished (a loaded machine gets room).
    assert time.perf_counter() - started < LIMITS.timeout_s + 5


async def test_loopback_needs_the_operator_setting(image_server: str) -> None:
    with pytest.raises(InputImageError) as caught:
        await fetch_input_image(f"{image_server}/ok.png", LIMITS, allow_loopback=False)
    assert caught.value.code == "INPUT_IMAGE_REFUSED"


@pytest.mark.parametrize(
    "url",
    [
        "http://10.1.2.3/x.png",
        "https://169.254.169.254/latest",
        "https://[::ffff:127.0.0.1]/x.png",
        "https://0x7f000001/x.png",
        "file:///etc/passwd",
        "https://user:pw@example.com/x.png",
    ],
)
async def test_guard_refuses_inside_addresses(url: str) -> None:
    with pytest.raises(InputImageError) as caught:
        await fetch_input_image(url, LIMITS, allow_loopback=False)
    assert caught.value.code == "INPUT_IMAGE_REFUSED"
    assert not caught.value.retryable


async def test_name_resolving_inside_is_refused() -> None:
    async def resolver(host: str, port: int) -> list[str]:
        return ["192.168.1.10"]

    with pytest.raises(InputImageError) as caught:
        await fetch_input_image(
            "https://images.example.com/x.png", LIMITS, allow_loopback=False, resolver=resolver
        )
    assert caught.value.code == "INPUT_IMAGE_REFUSED"
