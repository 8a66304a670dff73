"""Example outputs for sandbox jobs (``sk_test_`` keys): a real file of the requested kind.

The examples are made once per process by the real reference models and then cached; the
model host makes them in the background while Triton loads its models (`warm_examples`), so
the first sandbox jobs do not each pay for them. Video is a 2-second camera move over the
example image (the real image-to-video model).
"""

from __future__ import annotations

import io
import json
import logging
import math
import threading
import wave
import zipfile
from collections.abc import Callable

import numpy as np

from kiln_modelhost.reference_models import image, speech, video
from kiln_modelhost.reference_models.errors import ModelInputError, ModelRuntimeError

LOGGER = logging.getLogger(__name__)

SANDBOX_KINDS: tuple[str, ...] = ("image", "audio", "video")
#: what a sandbox example can be; a model's kind says which by default (image: PNG, audio: WAV,
#: video: MP4), a content type overrides it (auto-clip's results are ZIP archives)
SANDBOX_CONTENT_TYPES: tuple[str, ...] = ("image/png", "audio/wav", "video/mp4", "application/zip")
EXAMPLE_PROMPT = "sandbox example: calm abstract waves in teal and gold"
EXAMPLE_SEED = 0
EXAMPLE_SIDE = 512
EXAMPLE_SENTENCE = "This is an example result from the Kiln sandbox."


class _Once:
    """``make`` run once per process, however many model instances (threads) ask at once:
    the others wait for its answer instead of each rendering their own (which, at the start of
    a burst of sandbox jobs, cost every instance's thread a second or more of CPU)."""

    def __init__(self, make: Callable[[], bytes]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._made: bytes | None = None
        self.__name__ = make.__name__

    def __call__(self) -> bytes:
        made = self._made
        if made is None:
            with self._lock:
                if self._made is None:
                    self._made = self._make()
                made = self._made
        return made

    def cache_clear(self) -> None:
        with self._lock:
            self._made = None


def sine_tone_wav(
    frequency_hz: float = 440.0, duration_s: float = 1.0, sample_rate: int = 22050
) -> bytes:
    """A 16-bit mono WAV of a sine tone with short fades (the audio example without espeak-ng)."""
    count = max(1, round(duration_s * sample_rate))
    t = np.arange(count, dtype=np.float64) / sample_rate
    signal = 0.4 * np.sin(2.0 * math.pi * frequency_hz * t)
    fade = min(count // 2, round(0.02 * sample_rate))
    if fade > 0:
        ramp = np.linspace(0.0, 1.0, fade)
        signal[:fade] *= ramp
        signal[-fade:] *= ramp[::-1]
    samples = np.round(signal * 32767.0).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(sample_rate)
        writer.writeframes(samples.tobytes())
    return buffer.getvalue()


@_Once
def _example_image() -> bytes:
    return image.render_image(EXAMPLE_PROMPT, EXAMPLE_SEED, EXAMPLE_SIDE, EXAMPLE_SIDE)


@_Once
def _example_audio() -> bytes:
    if speech.espeak_available():
        try:
            return speech.synthesize_speech(EXAMPLE_SENTENCE, "en", 170)
        except ModelRuntimeError as exc:
            LOGGER.warning("espeak-ng failed, the sandbox audio example is a tone: %s", exc)
    return sine_tone_wav()


@_Once
def _example_video() -> bytes:
    return video.animate_image(_example_image(), "zoom_in", 2, 12, 256, 256)


@_Once
def _example_archive() -> bytes:
    """An auto-clip result's shape: one clip (the example video) and its manifest."""
    clip = _example_video()
    manifest = {
        "source": {"duration_s": 2.0, "width": 256, "height": 256, "fps": 12.0, "frames": 24},
        "scenes": 1,
        "aspect_ratio": "original",
        "score": "0.7 * motion + 0.3 * duration_s / max_duration_s",
        "clips": [
            {"file": "clip-01.mp4", "rank": 1, "start_s": 0.0, "end_s": 2.0,
             "duration_s": 2.0, "score": 1.0, "motion": 1.0},
        ],
        "sandbox": True,
    }  # fmt: skip
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as bundle:
        bundle.writestr("clip-01.mp4", clip)
        bundle.writestr("manifest.json", json.dumps(manifest, indent=2))
    return buffer.getvalue()


def sandbox_example(kind: str, content_type: str | None = None) -> tuple[bytes, str]:
    """An example output of ``kind`` ("image", "audio" or "video") and its content type, or of
    ``content_type`` when given (one of SANDBOX_CONTENT_TYPES).

    Raises ModelInputError for an unknown kind or content type.
    """
    if content_type == "application/zip":
        return _example_archive(), "application/zip"
    if content_type is not None:
        by_type = {"image/png": "image", "audio/wav": "audio", "video/mp4": "video"}
        if content_type not in by_type:
            raise ModelInputError(f"content_type must be one of {', '.join(SANDBOX_CONTENT_TYPES)}")
        kind = by_type[content_type]
    if kind == "image":
        return _example_image(), image.CONTENT_TYPE
    if kind == "audio":
        return _example_audio(), speech.CONTENT_TYPE
    if kind == "video":
        return _example_video(), video.CONTENT_TYPE
    raise ModelInputError(f"kind must be one of {', '.join(SANDBOX_KINDS)}")


def warm_examples() -> None:
    """Make every example now (the model host runs this in the background at start)."""
    for make in (_example_image, _example_audio, _example_video, _example_archive):
        try:
            make()
        except Exception:  # the request that needs it will fail with the model's own error
            LOGGER.warning("could not make the sandbox example %s", make.__name__, exc_info=True)
