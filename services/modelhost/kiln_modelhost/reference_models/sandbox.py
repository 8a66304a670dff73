"""Example outputs for sandbox jobs (``sk_test_`` keys): a real file of the requested kind.

The examples are made once per process by the real reference models and then cached.
Video is a 2-second camera move over the example image (the real image-to-video model).
"""

from __future__ import annotations

import functools
import io
import logging
import math
import wave

import numpy as np

from kiln_modelhost.reference_models import image, speech, video
from kiln_modelhost.reference_models.errors import ModelInputError, ModelRuntimeError

LOGGER = logging.getLogger(__name__)

SANDBOX_KINDS: tuple[str, ...] = ("image", "audio", "video")
EXAMPLE_PROMPT = "sandbox example: calm abstract waves in teal and gold"
EXAMPLE_SEED = 0
EXAMPLE_SIDE = 512
EXAMPLE_SENTENCE = "This is an example result from the Kiln sandbox."


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


@functools.cache
def _example_image() -> bytes:
    return image.render_image(EXAMPLE_PROMPT, EXAMPLE_SEED, EXAMPLE_SIDE, EXAMPLE_SIDE)


@functools.cache
def _example_audio() -> bytes:
    if speech.espeak_available():
        try:
            return speech.synthesize_speech(EXAMPLE_SENTENCE, "en", 170)
        except ModelRuntimeError as exc:
            LOGGER.warning("espeak-ng failed, the sandbox audio example is a tone: %s", exc)
    return sine_tone_wav()


@functools.cache
def _example_video() -> bytes:
    return video.animate_image(_example_image(), "zoom_in", 2, 12, 256, 256)


def sandbox_example(kind: str) -> tuple[bytes, str]:
    """An example output of ``kind`` ("image", "audio" or "video") and its content type.

    Raises ModelInputError for an unknown kind.
    """
    if kind == "image":
        return _example_image(), image.CONTENT_TYPE
    if kind == "audio":
        return _example_audio(), speech.CONTENT_TYPE
    if kind == "video":
        return _example_video(), video.CONTENT_TYPE
    raise ModelInputError(f"kind must be one of {', '.join(SANDBOX_KINDS)}")
