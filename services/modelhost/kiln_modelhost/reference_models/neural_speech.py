"""Neural text to speech (the model of ``kiln/speech``): hibari, an int8 ONNX student of
Kokoro-82M with the voice ``heart`` (American English, female), 24 kHz.

The voice, its lexicon and its grapheme-to-phoneme net ship inside the ``hibari-tts`` wheel
(Apache-2.0). hibari downloads its other voices on first use; Kiln offers only ``heart`` and
loads it by its path in the wheel, so nothing is ever fetched at run time. Text is split into
sentences by hibari and spoken one after the other; ``speed`` is the model's own duration
control (1.0 is the teacher's pace) and ``seed`` fixes the model's noise component, so the same
request gives the same WAV bytes.
"""

from __future__ import annotations

import io
import os
import threading
import unicodedata
import wave
from typing import Any

import numpy as np

from kiln_modelhost.reference_models.errors import ModelInputError, ModelRuntimeError

CONTENT_TYPE = "audio/wav"
SAMPLE_RATE = 24_000
VOICES: tuple[str, ...] = ("heart",)
MIN_SPEED = 0.5
MAX_SPEED = 2.0
MAX_TEXT_CHARS = 2000
MAX_SEED = 2**32 - 1

# One model per Triton instance thread: an onnxruntime session may be shared, but hibari's
# lazily built phonemiser is plain Python state.
_local = threading.local()


def _model() -> Any:
    loaded = getattr(_local, "model", None)
    if loaded is None:
        try:
            from hibari import Hibari
            from hibari.tts import ASSETS
        except ImportError as exc:  # pragma: no cover - the package is a dependency
            raise ModelRuntimeError("hibari-tts is not installed on this model host") from exc
        # The bundled file by its path: hibari never looks for (or downloads) another voice.
        loaded = Hibari(voice="heart", model=os.path.join(ASSETS, "hibari.onnx"), threads=1)
        _local.model = loaded
    return loaded


def _clean_text(text: object) -> str:
    if not isinstance(text, str):
        raise ModelInputError("text must be a string")
    cleaned = "".join(
        ch for ch in text if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cs")
    )
    if not cleaned.strip():
        raise ModelInputError("text must contain something to say")
    if len(cleaned) > MAX_TEXT_CHARS:
        raise ModelInputError(f"text must be at most {MAX_TEXT_CHARS} characters")
    return cleaned


def check_options(voice: object, speed: object, seed: object) -> tuple[str, float, int]:
    if voice not in VOICES:
        raise ModelInputError(f"voice must be one of {', '.join(VOICES)}")
    if isinstance(speed, bool) or not isinstance(speed, int | float):
        raise ModelInputError("speed must be a number")
    if not MIN_SPEED <= float(speed) <= MAX_SPEED:
        raise ModelInputError(f"speed must be between {MIN_SPEED} and {MAX_SPEED}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ModelInputError(f"seed must be an integer between 0 and {MAX_SEED}")
    return str(voice), float(speed), seed


def wav_bytes(samples: np.ndarray[Any, Any], sample_rate: int = SAMPLE_RATE) -> bytes:
    """16-bit mono PCM WAV of float samples in [-1, 1]."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(sample_rate)
        writer.writeframes(pcm.tobytes())
    return buffer.getvalue()


def speak(text: str, voice: str = "heart", speed: float = 1.0, seed: int = 0) -> bytes:
    """Speak ``text`` with the neural voice; a 24 kHz 16-bit mono WAV.

    Raises ModelInputError for invalid arguments or a text with nothing to pronounce.
    """
    cleaned = _clean_text(text)
    voice, speed, seed = check_options(voice, speed, seed)
    try:
        samples = _model()(cleaned, speed=speed, seed=seed)
    except (KeyError, ValueError, IndexError) as exc:
        # hibari's phonemiser on text it cannot read (e.g. no Latin letters at all)
        raise ModelInputError("the text could not be read as English") from exc
    if samples.size < SAMPLE_RATE // 20:
        raise ModelInputError("text produced no speech (the neural voice reads English)")
    return wav_bytes(np.asarray(samples, dtype=np.float32))
