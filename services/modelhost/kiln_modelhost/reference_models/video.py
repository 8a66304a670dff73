"""Image to short video: a camera move over a picture (the model of ``kiln/image-to-video``).

Each frame is a crop of the input that moves along a path (``zoom_in``, ``zoom_out``,
``pan_left``, ``pan_right``) with an ease-in-out curve, resampled to the output size with
Pillow; the frames are piped to ffmpeg (the binary of the ``imageio-ffmpeg`` wheel) and encoded as
H.264 in an MP4 (yuv420p, +faststart) that browsers and phones play.
"""

from __future__ import annotations

import math
import os
import subprocess
import tempfile
from pathlib import Path

import imageio_ffmpeg
from PIL import Image

from kiln_modelhost.reference_models.edit import decode_input_image
from kiln_modelhost.reference_models.errors import ModelInputError, ModelRuntimeError

CONTENT_TYPE = "video/mp4"
MOTIONS = ("zoom_in", "zoom_out", "pan_left", "pan_right")
MIN_DURATION_S = 1
MAX_DURATION_S = 8
FPS_CHOICES = (12, 24)
MIN_SIDE = 64
MAX_SIDE = 768
SIDE_MULTIPLE = 16
FFMPEG_TIMEOUT_S = 120.0


def _check_int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ModelInputError(f"{name} must be an integer between {low} and {high}")
    return value


def _ease(t: float) -> float:
    return 0.5 - 0.5 * math.cos(math.pi * t)


def crop_box(
    motion: str, t: float, width: int, height: int, aspect: float
) -> tuple[float, float, float, float]:
    """The part of a ``width`` x ``height`` picture that frame time ``t`` (0..1) shows."""
    # The largest box of the output's aspect that fits, then zoomed by up to 1.35x.
    box_w = min(width, height * aspect)
    box_h = box_w / aspect
    e = _ease(t)
    if motion in ("zoom_in", "zoom_out"):
        zoom = 1.0 + 0.35 * (e if motion == "zoom_in" else 1.0 - e)
        w, h = box_w / zoom, box_h / zoom
        cx, cy = width / 2.0, height / 2.0
    else:
        w, h = box_w / 1.2, box_h / 1.2
        travel = width - w
        x0 = travel * (1.0 - e) if motion == "pan_left" else travel * e
        cx, cy = x0 + w / 2.0, height / 2.0
    # clamped: float rounding may put an edge a hair outside the picture, which Pillow refuses
    return (
        max(0.0, cx - w / 2.0),
        max(0.0, cy - h / 2.0),
        min(float(width), cx + w / 2.0),
        min(float(height), cy + h / 2.0),
    )


def animate_image(
    data: bytes,
    motion: str = "zoom_in",
    duration_s: int = 3,
    fps: int = 12,
    width: int = 512,
    height: int = 512,
) -> bytes:
    """An MP4 of ``duration_s`` seconds at ``fps`` frames per second, ``width`` x ``height``."""
    if motion not in MOTIONS:
        raise ModelInputError(f"motion must be one of {', '.join(MOTIONS)}")
    _check_int("duration_s", duration_s, MIN_DURATION_S, MAX_DURATION_S)
    if fps not in FPS_CHOICES or isinstance(fps, bool):
        raise ModelInputError(f"fps must be one of {', '.join(map(str, FPS_CHOICES))}")
    for name, side in (("width", width), ("height", height)):
        _check_int(name, side, MIN_SIDE, MAX_SIDE)
        if side % SIDE_MULTIPLE:
            raise ModelInputError(f"{name} must be a multiple of {SIDE_MULTIPLE}")
    source = decode_input_image(data)
    frames = duration_s * fps
    with tempfile.TemporaryDirectory(prefix="kiln-video-") as tmp:
        target = Path(tmp) / "out.mp4"
        command = [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-hide_banner", "-loglevel", "error", "-nostdin",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
            "-r", str(fps), "-i", "-",
            "-an", "-c:v", "libx264", "-preset", "veryfast", "-crf", "23",
            "-pix_fmt", "yuv420p", "-movflags", "+faststart", "-threads", "2",
            str(target),
        ]  # fmt: skip
        errors_path = Path(tmp) / "ffmpeg.err"
        with errors_path.open("wb") as errors:
            process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stderr=errors, env={**os.environ}
            )
            assert process.stdin is not None
            try:
                for index in range(frames):
                    t = index / max(frames - 1, 1)
                    box = crop_box(motion, t, source.width, source.height, width / height)
                    frame = source.resize((width, height), Image.Resampling.BICUBIC, box=box)
                    process.stdin.write(frame.tobytes())
                process.stdin.close()
                process.wait(timeout=FFMPEG_TIMEOUT_S)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                process.kill()
                process.wait()
        if process.returncode != 0:
            tail = errors_path.read_text(errors="replace")[-300:]
            raise ModelRuntimeError(f"ffmpeg failed (exit {process.returncode}): {tail}")
        return target.read_bytes()
