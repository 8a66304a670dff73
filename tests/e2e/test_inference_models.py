"""The models that take an input image, over HTTP on the whole stack: the worker fetches the
image from a server on loopback (the stack allows loopback URLs), Triton restyles or animates
it, and the client decrypts and decodes what it gets. Plus the sandbox's video example, the
sandbox timeout outcome and a bad input image."""

from __future__ import annotations

import io
import json
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import imageio_ffmpeg
import pytest
from PIL import Image

from kiln_modelhost.reference_models.image import render_image
from tests.e2e.test_happy_path import client, download_and_decrypt, wait_for_final

pytestmark = pytest.mark.e2e

SOURCE = render_image("a harbour at dusk", 4, 320, 240)


# Requests per path: a job whose attempt was retried fetched its input more than once.
FETCHES: Counter[str] = Counter()


@pytest.fixture(scope="module")
def image_server() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            FETCHES[self.path] += 1
            body, content_type = (
                (SOURCE, "image/png") if self.path == "/harbour.png" else (b"<html/>", "text/html")
            )
            self.send_response(200)
            self.send_header("Content-Type", content_type)
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


def video_facts(data: bytes) -> tuple[dict[str, Any], int]:
    with tempfile.NamedTemporaryFile(suffix=".mp4") as handle:
        handle.write(data)
        handle.flush()
        reader = imageio_ffmpeg.read_frames(handle.name)
        meta: dict[str, Any] = next(reader)
        frames = sum(1 for _ in reader)
    return meta, frames


def test_catalog_lists_the_image_models(stack: dict[str, str]) -> None:
    with client(stack, stack["KILN_DEMO_LIVE_KEY"]) as api:
        models = {m["id"]: m for m in api.get("/models").json()["data"]}
    assert models["kiln/image-edit"]["needs_input_image"] is True
    assert models["kiln/image-to-video"]["kind"] == "video"
    assert "image_url" in models["kiln/image-to-video"]["input_schema"]["required"]


def test_image_edit_restyles_the_given_image(stack: dict[str, str], image_server: str) -> None:
    secret = stack["KILN_DEMO_LIVE_KEY"]
    with client(stack, secret) as api:
        created = api.post(
            "/jobs",
            json={
                "model": "kiln/image-edit",
                "input": {
                    "image_url": f"{image_server}/harbour.png",
                    "prompt": "autumn fire",
                    "strength": 0.7,
                },
            },
        )
        assert created.status_code == 202, created.text
        done = wait_for_final(api, created.json()["data"]["id"])
        assert done["status"] == "completed", done
        png = download_and_decrypt(api, done, secret)
    edited = Image.open(io.BytesIO(png))
    assert (edited.format, edited.size) == ("PNG", (320, 240))
    assert png != SOURCE


def test_image_to_video_is_a_real_mp4(stack: dict[str, str], image_server: str) -> None:
    secret = stack["KILN_DEMO_LIVE_KEY"]
    with client(stack, secret) as api:
        created = api.post(
            "/jobs",
            json={
                "model": "kiln/image-to-video",
                "input": {
                    "image_url": f"{image_server}/harbour.png",
                    "motion": "zoom_in",
                    "duration_s": 2,
                    "fps": 12,
                    "width": 256,
                    "height": 192,
                },
            },
        )
        assert created.status_code == 202, created.text
        done = wait_for_final(api, created.json()["data"]["id"])
        assert done["status"] == "completed", done
        assert done["result"]["content_type"] == "video/mp4"
        mp4 = download_and_decrypt(api, done, secret)
    meta, frames = video_facts(mp4)
    assert meta["size"] == (256, 192)
    assert frames == 24
    assert meta["duration"] == pytest.approx(2.0, abs=0.1)


def test_sandbox_video_example(stack: dict[str, str], image_server: str) -> None:
    secret = stack["KILN_DEMO_SANDBOX_KEY"]
    with client(stack, secret) as api:
        created = api.post(
            "/jobs",
            json={
                "model": "kiln/image-to-video",
                "input": {"image_url": f"{image_server}/harbour.png"},
            },
        )
        assert created.status_code == 202, created.text
        done = wait_for_final(api, created.json()["data"]["id"])
        assert done["status"] == "completed", done
        mp4 = download_and_decrypt(api, done, secret)
    meta, frames = video_facts(mp4)
    assert frames > 0 and meta["codec"] == "h264"


def test_not_an_image_fails_at_once(stack: dict[str, str], image_server: str) -> None:
    path = f"/page.html?case={uuid.uuid4().hex}"
    with client(stack, stack["KILN_DEMO_LIVE_KEY"]) as api:
        created = api.post(
            "/jobs",
            json={
                "model": "kiln/image-edit",
                "input": {"image_url": f"{image_server}{path}", "prompt": "x"},
            },
        )
        assert created.status_code == 202, created.text
        done = wait_for_final(api, created.json()["data"]["id"], timeout_s=30)
    assert done["status"] == "failed", done
    assert done["error"]["code"] == "INPUT_IMAGE_INVALID"
    assert FETCHES[path] == 1  # one attempt: not retried
    assert done["cost"] in (None, "0")


def test_sandbox_timeout_outcome(stack: dict[str, str]) -> None:
    with client(stack, stack["KILN_DEMO_SANDBOX_KEY"]) as api:
        created = api.post(
            "/jobs",
            json={
                "model": "kiln/prompt-to-image",
                "input": {"prompt": "x"},
                "sandbox": {"outcome": "timeout", "delay_s": 1},
            },
        )
        assert created.status_code == 202, created.text
        done = wait_for_final(api, created.json()["data"]["id"], timeout_s=30)
    assert done["status"] == "failed", done
    assert done["error"]["code"] == "TIMEOUT"


def test_stream_of_a_video_job_shows_progress(stack: dict[str, str], image_server: str) -> None:
    # A sandbox job, so the job's length is the requested delay and not how fast this machine
    # renders video: 3 s against the stack's 0.5 s heartbeat leaves several progress events
    # between "started" and the end, however loaded the machine is.
    with client(stack, stack["KILN_DEMO_SANDBOX_KEY"]) as api:
        created = api.post(
            "/jobs",
            json={
                "model": "kiln/image-to-video",
                "input": {"image_url": f"{image_server}/harbour.png"},
                "sandbox": {"outcome": "completed", "delay_s": 3},
            },
        )
        assert created.status_code == 202, created.text
        job_id = created.json()["data"]["id"]
        seen: list[float] = []
        with api.stream("GET", f"/jobs/{job_id}/events", timeout=60) as events:
            for line in events.iter_lines():
                if line.startswith("data:"):
                    data = json.loads(line[5:])
                    job = data.get("data", data)
                    if isinstance(job, dict) and job.get("progress") is not None:
                        seen.append(float(job["progress"]))
                    if isinstance(job, dict) and job.get("status") in ("completed", "failed"):
                        break
        done = wait_for_final(api, job_id)
    assert done["status"] == "completed", done
    assert any(0 < p < 1 for p in seen), seen
    assert seen == sorted(seen) and seen[-1] == 1.0, seen


def wait_for_status(
    api: Any, job_id: str, statuses: set[str], timeout_s: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job: dict[str, Any] = api.get(f"/jobs/{job_id}").json()["data"]
        if job["status"] in statuses:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never reached {statuses}: {job}")


def test_cancel_stops_a_running_job(stack: dict[str, str]) -> None:
    with client(stack, stack["KILN_DEMO_SANDBOX_KEY"]) as api:
        created = api.post(
            "/jobs",
            json={
                "model": "kiln/prompt-to-image",
                "input": {"prompt": "a long wait"},
                "sandbox": {"outcome": "completed", "delay_s": 30},
            },
        )
        job_id = created.json()["data"]["id"]
        wait_for_status(api, job_id, {"running"})
        asked = time.monotonic()
        canceled = api.post(f"/jobs/{job_id}/cancel")
        assert canceled.status_code in (200, 202), canceled.text
        done = wait_for_final(api, job_id, timeout_s=25)
        took = time.monotonic() - asked
    assert done["status"] == "canceled", done
    assert done["result"] is None
    # The cancel stopped the attempt: it did not run out its 30 s delay first.
    assert took < 25, f"the worker took {took:.1f} s to confirm the cancel"
