"""A photo of a person as the input image: the worker refuses it before Triton, the job fails
at once with INPUT_IMAGE_REFUSED (not retried) and costs nothing (docs/content-policy.md)."""

from __future__ import annotations

import io
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from PIL import Image
from skimage import data as samples

from tests.e2e.test_happy_path import client, wait_for_final

pytestmark = pytest.mark.e2e


def _astronaut_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(samples.astronaut()).save(buffer, format="PNG")
    return buffer.getvalue()


# Requests per path: a job whose attempt was retried fetched its image more than once.
FETCHES: Counter[str] = Counter()


@pytest.fixture(scope="module")
def person_server() -> Iterator[str]:
    body = _astronaut_png()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            FETCHES[self.path] += 1
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_photo_of_a_person_is_refused(stack: dict[str, str], person_server: str) -> None:
    path = f"/astronaut.png?case={uuid.uuid4().hex}"
    with client(stack, stack["KILN_DEMO_LIVE_KEY"]) as api:
        created = api.post(
            "/jobs",
            json={
                "model": "kiln/image-edit",
                "input": {"image_url": f"{person_server}{path}", "prompt": "oil paint"},
            },
        )
        assert created.status_code == 202, created.text
        done = wait_for_final(api, created.json()["data"]["id"], timeout_s=30)
    assert done["status"] == "failed", done
    assert done["error"]["code"] == "INPUT_IMAGE_REFUSED"
    assert "person" in done["error"]["message"]
    assert FETCHES[path] == 1  # one attempt: refused, not retried
    assert done["cost"] in (None, "0")
    assert done["result"] is None
