"""Input videos (auto-clip) fetched through the URL guard from a real HTTP server on loopback,
checked (readable, within the duration cap) and screened on sampled frames."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import pytest
from PIL import Image
from skimage import data as samples

from kiln_inference.inputs import FetchLimits, InputFileError, fetch_input_file
from tests.integration.modelhost.test_neural_models import scenes_video

pytestmark = pytest.mark.integration

LIMITS = FetchLimits(video_max_bytes=2 * 1024 * 1024, video_max_duration_s=10.0, video_timeout_s=20)


def _still_video(path: Path, picture: Image.Image, seconds: float, fps: int = 8) -> bytes:
    frame = picture.convert("RGB").resize((160, 160)).tobytes()
    writer = imageio_ffmpeg.write_frames(str(path), (160, 160), fps=fps, macro_block_size=4)
    writer.send(None)
    for _ in range(round(seconds * fps)):
        writer.send(frame)
    writer.close()
    return path.read_bytes()


@pytest.fixture(scope="module")
def video_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("videos")
    scenes_video(folder / "scenes.mp4")
    # a person in the last scene only: the screen must look past the first frames
    writer_path = folder / "late-person.mp4"
    coffee = Image.fromarray(samples.coffee())
    astronaut = Image.fromarray(samples.astronaut())
    frames = [coffee] * 24 + [astronaut] * 24
    writer = imageio_ffmpeg.write_frames(str(writer_path), (160, 160), fps=8, macro_block_size=4)
    writer.send(None)
    for picture in frames:
        writer.send(picture.convert("RGB").resize((160, 160)).tobytes())
    writer.close()
    bodies = {
        "/scenes.mp4": (folder / "scenes.mp4").read_bytes(),
        "/late-person.mp4": writer_path.read_bytes(),
        "/long.mp4": _still_video(folder / "long.mp4", coffee, 14.0),
        "/not-a-video.mp4": b"\x00\x00\x00\x18ftypmp42 but nothing after",
        "/big.mp4": b"\0" * (LIMITS.video_max_bytes + 1),
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = bodies.get(self.path, b"")
            self.send_response(200 if self.path in bodies else 404)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


async def test_a_video_without_people_passes(video_server: str) -> None:
    data = await fetch_input_file(
        f"{video_server}/scenes.mp4", "video", LIMITS, allow_loopback=True
    )
    assert data[4:8] == b"ftyp"


@pytest.mark.parametrize(
    ("path", "code", "retryable"),
    [
        ("/late-person.mp4", "INPUT_VIDEO_REFUSED", False),
        ("/long.mp4", "INPUT_VIDEO_TOO_LARGE", False),
        ("/big.mp4", "INPUT_VIDEO_TOO_LARGE", False),
        ("/not-a-video.mp4", "INPUT_VIDEO_INVALID", False),
        ("/missing.mp4", "INPUT_VIDEO_INVALID", False),
    ],
)
async def test_refused_videos(video_server: str, path: str, code: str, retryable: bool) -> None:
    with pytest.raises(InputFileError) as caught:
        await fetch_input_file(f"{video_server}{path}", "video", LIMITS, allow_loopback=True)
    assert (caught.value.code, caught.value.retryable) == (code, retryable)
    if code == "INPUT_VIDEO_REFUSED":
        assert "person" in caught.value.message


async def test_a_private_address_is_refused_for_videos() -> None:
    with pytest.raises(InputFileError) as caught:
        await fetch_input_file("https://10.0.0.1/v.mp4", "video", LIMITS, allow_loopback=False)
    assert caught.value.code == "INPUT_VIDEO_REFUSED"
