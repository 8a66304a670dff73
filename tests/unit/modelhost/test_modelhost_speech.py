"""Text to speech with espeak-ng (kiln_modelhost.reference_models.speech)."""

from __future__ import annotations

import io
import json
import shutil
import struct
import wave
from pathlib import Path
from typing import Any

import pytest

from kiln_modelhost.reference_models import speech
from kiln_modelhost.reference_models.errors import ModelInputError, ModelRuntimeError
from kiln_modelhost.reference_models.speech import (
    fix_wav_header,
    synthesize_speech,
    wav_duration_s,
)

CATALOG = Path(__file__).resolve().parents[3] / "libs/runtime/kiln_runtime/data/catalog.json"

needs_espeak = pytest.mark.skipif(
    not speech.espeak_available(),
    reason="espeak-ng is not installed (apt-get install espeak-ng; deploy/local/apt-packages.txt)",
)


def _read(data: bytes) -> tuple[int, int, int, int]:
    with wave.open(io.BytesIO(data), "rb") as reader:
        return (
            reader.getnchannels(),
            reader.getsampwidth(),
            reader.getframerate(),
            reader.getnframes(),
        )


@needs_espeak
def test_wav_decodes_with_a_plausible_duration() -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 3  # 27 words
    audio = synthesize_speech(text, "en", 180)
    channels, width, rate, frames = _read(audio)
    assert (channels, width) == (1, 2)
    assert rate >= 8000
    # the header sizes are right (espeak-ng's stdout header has placeholders)
    assert len(audio) == 44 + frames * 2
    assert struct.unpack_from("<I", audio, 4)[0] == len(audio) - 8
    duration = frames / rate
    expected = 27 / 180 * 60  # 9 s at the requested pace
    assert 0.5 * expected < duration < 2.0 * expected


@needs_espeak
def test_faster_speech_is_shorter() -> None:
    text = "Kiln turns text into speech on the CPU with espeak-ng."
    slow = wav_duration_s(synthesize_speech(text, "en", 100))
    fast = wav_duration_s(synthesize_speech(text, "en", 300))
    assert fast < slow * 0.6


@needs_espeak
@pytest.mark.parametrize("voice", ["en", "en-us", "en-gb", "de", "fr", "es", "it"])
def test_every_catalog_voice_speaks(voice: str) -> None:
    assert wav_duration_s(synthesize_speech("Bonjour, hallo, hello, hola, ciao.", voice)) > 0.5


@needs_espeak
def test_text_that_looks_like_options_is_spoken_not_parsed() -> None:
    # The text goes to espeak-ng's standard input, so it can never become a command-line option.
    audio = synthesize_speech("--help -v xx -w /tmp/owned.wav --version", "en", 170)
    assert wav_duration_s(audio) > 1.0
    assert not Path("/tmp/owned.wav").exists()


@needs_espeak
def test_same_text_gives_the_same_audio() -> None:
    assert synthesize_speech("Deterministic.", "en", 170) == synthesize_speech(
        "Deterministic.", "en", 170
    )


@needs_espeak
def test_unicode_and_control_characters() -> None:
    audio = synthesize_speech("Grüße aus Köln!\x00\x07 Ça va? ñ", "de", 170)
    assert wav_duration_s(audio) > 0.5


@pytest.mark.parametrize(
    ("text", "voice", "wpm"),
    [
        ("", "en", 170),
        ("  \n\t ", "en", 170),
        ("\x00\x01", "en", 170),
        ("x" * 2001, "en", 170),
        (None, "en", 170),
        ("hi", "xx", 170),
        ("hi", "-w/tmp/x", 170),
        ("hi", "en", 79),
        ("hi", "en", 401),
        ("hi", "en", True),
        ("hi", "en", "170"),
    ],
)
def test_invalid_arguments(text: Any, voice: Any, wpm: Any) -> None:
    with pytest.raises(ModelInputError) as caught:
        synthesize_speech(text, voice, wpm)
    assert caught.value.code == "INVALID_INPUT"
    assert not caught.value.retryable


def test_missing_espeak_is_a_runtime_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(ModelRuntimeError) as caught:
        synthesize_speech("hello")
    assert caught.value.retryable
    assert str(caught.value).startswith("MODEL_ERROR: ")


def _streamed_wav(frames: bytes) -> bytes:
    """A WAV as espeak-ng writes it to a pipe: placeholder sizes in the header."""
    fmt = struct.pack("<HHIIHH", 1, 1, 22050, 44100, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", 0x7FFFF024)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", 0x7FFFF000)
        + frames
    )


def test_fix_wav_header_sets_the_real_sizes() -> None:
    frames = bytes(range(200)) + b"\x00" * 100  # ends in silence: the zeros must be kept
    fixed = fix_wav_header(_streamed_wav(frames))
    assert _read(fixed) == (1, 2, 22050, 150)
    with wave.open(io.BytesIO(fixed), "rb") as reader:
        assert reader.readframes(1000) == frames


def test_fix_wav_header_drops_a_half_sample() -> None:
    fixed = fix_wav_header(_streamed_wav(b"\x01\x02\x03"))
    assert _read(fixed)[3] == 1


@pytest.mark.parametrize("data", [b"", b"RIFF", b"not a wav file at all", b"RIFF\0\0\0\0WAVEfmt "])
def test_fix_wav_header_rejects_garbage(data: bytes) -> None:
    with pytest.raises(ModelRuntimeError):
        fix_wav_header(data)


def test_bounds_match_the_catalog() -> None:
    models = json.loads(CATALOG.read_text())["models"]
    schema = next(m for m in models if m["triton_model"] == "tts_espeak")["input_schema"]
    props = schema["properties"]
    assert props["text"]["maxLength"] == speech.MAX_TEXT_CHARS
    assert tuple(props["voice"]["enum"]) == speech.SUPPORTED_VOICES
    assert props["words_per_minute"]["minimum"] == speech.MIN_WORDS_PER_MINUTE
    assert props["words_per_minute"]["maximum"] == speech.MAX_WORDS_PER_MINUTE
