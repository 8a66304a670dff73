"""The neural models through the whole stack, over HTTP: a job per model, its encrypted result
downloaded, decrypted and decoded; input images and videos showing a person refused before
Triton and never charged; and an operator's model on a second Triton server, added to the
catalog by configuration alone (tests/e2e/conftest.py, operator_triton), running real jobs."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
import uuid
import wave
import zipfile
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image
from skimage import data as samples

from kiln_inference.triton_client import close_clients, triton_ready
from tests.e2e.conftest import OperatorTriton
from tests.e2e.operator_triton import posterize
from tests.e2e.test_happy_path import client, download_and_decrypt, wait_for_final
from tests.integration.modelhost.test_neural_models import scenes_video
from tests.triton_support import tail

pytestmark = pytest.mark.e2e


def _png(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


SMALL_PNG = _png(Image.fromarray(samples.coffee()).resize((120, 80)))


def _person_video(path: Path) -> None:
    """Two seconds of the astronaut portrait (scikit-image), slowly zoomed."""
    picture = Image.fromarray(samples.astronaut())
    writer = imageio_ffmpeg.write_frames(str(path), (256, 256), fps=8, macro_block_size=4)
    writer.send(None)
    for index in range(16):
        zoom = 1.0 + 0.1 * index / 16
        side = 512 / zoom
        box = ((512 - side) / 2, (512 - side) / 2, (512 + side) / 2, (512 + side) / 2)
        writer.send(picture.resize((256, 256), Image.Resampling.BICUBIC, box=box).tobytes())
    writer.close()


# Requests per path (with its query): an attempt that was retried fetched its inputs again.
FETCHES: Counter[str] = Counter()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Input files on loopback (the stack allows loopback URLs)."""
    folder = tmp_path_factory.mktemp("inputs")
    scenes_video(folder / "scenes.mp4")
    _person_video(folder / "person.mp4")
    bodies = {
        "/coffee.png": (_png(Image.fromarray(samples.coffee())), "image/png"),
        "/small.png": (SMALL_PNG, "image/png"),
        "/astronaut.png": (_png(Image.fromarray(samples.astronaut())), "image/png"),
        "/scenes.mp4": ((folder / "scenes.mp4").read_bytes(), "video/mp4"),
        "/person.mp4": ((folder / "person.mp4").read_bytes(), "video/mp4"),
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            FETCHES[self.path] += 1
            name = self.path.split("?", 1)[0]
            body, content_type = bodies.get(name, (b"not found", "text/plain"))
            self.send_response(200 if name in bodies else 404)
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


def run_job(
    stack: dict[str, str], model: str, input_: dict[str, Any], key: str = "KILN_DEMO_LIVE_KEY"
) -> tuple[dict[str, Any], bytes | None]:
    secret = stack[key]
    with client(stack, secret) as api:
        created = api.post("/jobs", json={"model": model, "input": input_})
        assert created.status_code == 202, created.text
        done = wait_for_final(api, created.json()["data"]["id"], timeout_s=300)
        if done["status"] != "completed":
            return done, None
        return done, download_and_decrypt(api, done, secret)


def test_the_catalog_lists_every_model_with_its_description(stack: dict[str, str]) -> None:
    with client(stack, stack["KILN_DEMO_LIVE_KEY"]) as api:
        models = {m["id"]: m for m in api.get("/models").json()["data"]}
    for model_id in (
        "kiln/speech",
        "kiln/remove-background",
        "kiln/product-shot",
        "kiln/upscale",
        "kiln/upscale-x4plus",
        "kiln/auto-clip",
        "acme/posterize",
    ):
        assert model_id in models
    assert "procedural" in models["kiln/prompt-to-image"]["name"]
    assert models["kiln/auto-clip"]["content_type"] == "application/zip"


def test_neural_speech(stack: dict[str, str]) -> None:
    done, wav = run_job(stack, "kiln/speech", {"text": "Your order has shipped.", "speed": 1.1})
    assert done["status"] == "completed", done
    assert done["result"]["content_type"] == "audio/wav"
    assert done["cost"] == "2"
    assert wav is not None
    with wave.open(io.BytesIO(wav)) as reader:
        assert reader.getframerate() == 24_000 and reader.getnframes() > 12_000


def test_remove_background_and_product_shot(stack: dict[str, str], files: str) -> None:
    done, png = run_job(stack, "kiln/remove-background", {"image_url": f"{files}/coffee.png"})
    assert done["status"] == "completed", done
    assert png is not None
    cut = Image.open(io.BytesIO(png))
    assert cut.mode == "RGBA" and cut.size == (600, 400)
    alpha = np.asarray(cut.getchannel("A"))
    assert alpha[0, 0] == 0 and alpha[200, 300] >= 250  # table clear, cup opaque
    done, png = run_job(
        stack,
        "kiln/product-shot",
        {"image_url": f"{files}/coffee.png", "aspect_ratio": "9:16", "size": 320},
    )
    assert done["status"] == "completed", done
    assert png is not None and Image.open(io.BytesIO(png)).size == (180, 320)


def test_upscale(stack: dict[str, str], files: str) -> None:
    done, png = run_job(stack, "kiln/upscale", {"image_url": f"{files}/small.png", "scale": 2})
    assert done["status"] == "completed", done
    assert png is not None and Image.open(io.BytesIO(png)).size == (240, 160)


def test_auto_clip_returns_an_archive_of_clips(stack: dict[str, str], files: str) -> None:
    done, archive = run_job(
        stack,
        "kiln/auto-clip",
        {
            "video_url": f"{files}/scenes.mp4",
            "min_duration_s": 1,
            "max_duration_s": 3,
            "max_clips": 2,
            "aspect_ratio": "9:16",
        },
    )
    assert done["status"] == "completed", done
    assert done["result"]["content_type"] == "application/zip"
    assert archive is not None
    with zipfile.ZipFile(io.BytesIO(archive)) as bundle:
        manifest = json.loads(bundle.read("manifest.json"))
        assert bundle.namelist() == ["clip-01.mp4", "clip-02.mp4", "manifest.json"]
        assert bundle.read("clip-01.mp4")[4:8] == b"ftyp"
    assert [c["rank"] for c in manifest["clips"]] == [1, 2]


def test_the_sandbox_answers_auto_clip_with_an_archive(stack: dict[str, str], files: str) -> None:
    done, archive = run_job(
        stack, "kiln/auto-clip", {"video_url": f"{files}/scenes.mp4"}, key="KILN_DEMO_SANDBOX_KEY"
    )
    assert done["status"] == "completed", done
    assert done["result"]["content_type"] == "application/zip"
    assert archive is not None and zipfile.is_zipfile(io.BytesIO(archive))


@pytest.mark.parametrize(
    ("model", "input_", "code"),
    [
        ("kiln/remove-background", {"image_url": "/astronaut.png"}, "INPUT_IMAGE_REFUSED"),
        ("kiln/product-shot", {"image_url": "/astronaut.png"}, "INPUT_IMAGE_REFUSED"),
        (
            "kiln/product-shot",
            {"image_url": "/coffee.png", "background": "image", "background_url": "/astronaut.png"},
            "INPUT_IMAGE_REFUSED",
        ),
        ("kiln/upscale", {"image_url": "/astronaut.png"}, "INPUT_IMAGE_REFUSED"),
        ("kiln/auto-clip", {"video_url": "/person.mp4"}, "INPUT_VIDEO_REFUSED"),
        ("acme/posterize", {"image_url": "/astronaut.png"}, "INPUT_IMAGE_REFUSED"),
    ],
)
def test_people_are_refused_and_not_charged(
    stack: dict[str, str], files: str, model: str, input_: dict[str, Any], code: str
) -> None:
    case = uuid.uuid4().hex
    paths = {k: f"{v}?case={case}" for k, v in input_.items() if k.endswith("_url")}
    with_urls = {**input_, **{k: f"{files}{path}" for k, path in paths.items()}}
    done, _ = run_job(stack, model, with_urls)
    assert done["status"] == "failed", done
    assert done["error"]["code"] == code
    assert "person" in done["error"]["message"]
    assert done["cost"] in (None, "0") and done["result"] is None
    # Refused once, not retried: no input was fetched twice.
    fetched = [FETCHES[path] for path in paths.values()]
    assert max(fetched) == 1, fetched


# --- an operator's model -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def operator_ready(operator_triton: OperatorTriton) -> OperatorTriton:
    async def wait() -> None:
        deadline = time.monotonic() + 240
        try:
            while not await triton_ready(operator_triton.url, ["posterize"]):
                if time.monotonic() > deadline:
                    pytest.fail(f"the operator's Triton is not ready:\n{tail(operator_triton.log)}")
                await asyncio.sleep(0.5)
        finally:
            await close_clients(operator_triton.url)

    asyncio.run(wait())
    return operator_triton


def test_an_operators_model_runs_jobs(
    stack: dict[str, str], files: str, operator_ready: OperatorTriton
) -> None:
    done, png = run_job(stack, "acme/posterize", {"image_url": f"{files}/small.png", "levels": 3})
    assert done["status"] == "completed", done
    assert done["cost"] == "1.5"
    assert done["result"]["content_type"] == "image/png"
    assert png is not None
    poster = np.asarray(Image.open(io.BytesIO(png)))
    # exactly what the operator's model computes from the picture the worker fetched
    source = np.asarray(Image.open(io.BytesIO(SMALL_PNG)).convert("RGB"))
    assert np.array_equal(poster, posterize(source, 3))
    assert set(np.unique(poster)) <= {0, 127, 255}
    # the default level count (4) fills LEVELS when the job leaves it out
    done, png = run_job(stack, "acme/posterize", {"image_url": f"{files}/small.png"})
    assert done["status"] == "completed", done
    assert png is not None
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), posterize(source, 4))
    assert "posterize batch=" in operator_ready.log.read_text()
