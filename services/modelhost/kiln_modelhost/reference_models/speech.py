"""Text to speech with espeak-ng (the reference model behind ``kiln/text-to-speech``).

The text goes to espeak-ng on standard input, never on the command line, so no text can be read
as an option. espeak-ng cannot seek its standard output, so the WAV it writes there carries
placeholder sizes in its header; they are fixed here so that every WAV reader gets the real length.
"""

from __future__ import annotations

import io
import logging
import shutil
import struct
import subprocess
import unicodedata
import wave

from kiln_modelhost.reference_models.errors import ModelInputError, ModelRuntimeError

LOGGER = logging.getLogger(__name__)

ESPEAK_BINARY = "espeak-ng"
#: the voices the catalog offers (``kiln/text-to-speech`` input ``voice``)
SUPPORTED_VOICES: tuple[str, ...] = ("en", "en-us", "en-gb", "de", "fr", "es", "it")
MIN_WORDS_PER_MINUTE = 80
MAX_WORDS_PER_MINUTE = 400
MAX_TEXT_CHARS = 2000
DEFAULT_TIMEOUT_S = 60.0
CONTENT_TYPE = "audio/wav"


def espeak_available() -> bool:
    """Whether the espeak-ng program can be found on ``PATH``."""
    return shutil.which(ESPEAK_BINARY) is not None


def _clean_text(text: object) -> str:
    if not isinstance(text, str):
        raise ModelInputError("text must be a string")
    # Control characters (other than line breaks and tabs) mean nothing to a speaker; drop them.
    cleaned = "".join(
        ch for ch in text if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cs")
    )
    if not cleaned.strip():
        raise ModelInputError("text must contain something to say")
    if len(cleaned) > MAX_TEXT_CHARS:
        raise ModelInputError(f"text must be at most {MAX_TEXT_CHARS} characters")
    return cleaned


def _check_options(voice: object, words_per_minute: object) -> tuple[str, int]:
    if not isinstance(voice, str) or voice not in SUPPORTED_VOICES:
        raise ModelInputError(f"voice must be one of {', '.join(SUPPORTED_VOICES)}")
    if isinstance(words_per_minute, bool) or not isinstance(words_per_minute, int):
        raise ModelInputError("words_per_minute must be an integer")
    if not MIN_WORDS_PER_MINUTE <= words_per_minute <= MAX_WORDS_PER_MINUTE:
        raise ModelInputError(
            f"words_per_minute must be between {MIN_WORDS_PER_MINUTE} and {MAX_WORDS_PER_MINUTE}"
        )
    return voice, words_per_minute


def fix_wav_header(data: bytes) -> bytes:
    """Return ``data`` with the RIFF and ``data`` chunk sizes set to what the bytes really hold.

    Raises ModelRuntimeError when ``data`` is not a PCM WAV file.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ModelRuntimeError("espeak-ng did not produce a WAV file")
    fixed = bytearray(data)
    offset = 12
    while offset + 8 <= len(fixed):
        chunk_id = bytes(fixed[offset : offset + 4])
        (size,) = struct.unpack_from("<I", fixed, offset + 4)
        body = offset + 8
        if chunk_id == b"data":
            actual = len(fixed) - body
            actual -= actual % 2  # whole 16-bit samples only
            del fixed[body + actual :]
            struct.pack_into("<I", fixed, offset + 4, actual)
            struct.pack_into("<I", fixed, 4, len(fixed) - 8)
            return bytes(fixed)
        offset = body + size + (size % 2)
    raise ModelRuntimeError("espeak-ng produced a WAV file without audio data")


def wav_duration_s(data: bytes) -> float:
    """The duration of a WAV file in seconds (for checks and logs)."""
    with wave.open(io.BytesIO(data), "rb") as reader:
        return reader.getnframes() / float(reader.getframerate())


def synthesize_speech(
    text: str,
    voice: str = "en",
    words_per_minute: int = 170,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> bytes:
    """Speak ``text`` with espeak-ng and return a 16-bit mono PCM WAV file.

    Raises ModelInputError for invalid arguments and ModelRuntimeError when espeak-ng is missing,
    fails or takes longer than ``timeout_s``.
    """
    cleaned = _clean_text(text)
    voice, words_per_minute = _check_options(voice, words_per_minute)
    binary = shutil.which(ESPEAK_BINARY)
    if binary is None:
        raise ModelRuntimeError("espeak-ng is not installed on this inference server")
    command = [
        binary,
        "--stdout",
        "--stdin",  # read all of standard input at once
        "-b",
        "1",  # input is UTF-8
        "-v",
        voice,
        "-s",
        str(words_per_minute),
    ]
    try:
        completed = subprocess.run(
            command,
            input=cleaned.encode("utf-8"),
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ModelRuntimeError(f"espeak-ng took longer than {timeout_s:g} s") from exc
    except OSError as exc:
        raise ModelRuntimeError(f"espeak-ng could not be started: {exc.strerror}") from exc
    if completed.returncode != 0:
        LOGGER.warning(
            "espeak-ng exited with status %s: %s",
            completed.returncode,
            completed.stderr.decode("utf-8", "replace").strip()[:500],
        )
        raise ModelRuntimeError(f"espeak-ng exited with status {completed.returncode}")
    audio = fix_wav_header(completed.stdout)
    try:
        duration = wav_duration_s(audio)
    except (wave.Error, EOFError) as exc:
        raise ModelRuntimeError("espeak-ng produced an unreadable WAV file") from exc
    if duration <= 0.0:
        raise ModelInputError("text produced no speech")
    return audio
