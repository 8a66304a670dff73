"""One handler per reference model: a request (the decoded JSON of one ``request`` tensor
element) in, ``(file bytes, content type)`` out, or a ModelError. The sandbox model is parsed
here and answered in batching.py, which waits out a batch's delays together.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kiln_modelhost.contract import MAX_SANDBOX_DELAY_MS, SANDBOX_OUTCOMES
from kiln_modelhost.reference_models import edit, image, sandbox, speech, video
from kiln_modelhost.reference_models.errors import ModelInputError, SandboxFailedError

Result = tuple[bytes, str]
Handler = Callable[[dict[str, Any]], Result]


def decode_request(raw: object) -> dict[str, Any]:
    """The JSON object carried by one ``request`` tensor element."""
    if isinstance(raw, np.bytes_):
        raw = bytes(raw)
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    if not isinstance(raw, bytes):
        raise ModelInputError("request must be UTF-8 JSON bytes")
    try:
        decoded = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelInputError("request is not valid UTF-8 JSON") from exc
    if not isinstance(decoded, dict):
        raise ModelInputError("request must be a JSON object")
    return decoded


def _only_fields(request: Mapping[str, Any], allowed: Sequence[str]) -> None:
    unknown = sorted(set(request) - set(allowed))
    if unknown:
        raise ModelInputError(f"unknown field(s): {', '.join(unknown)}")


def _required(request: Mapping[str, Any], name: str) -> Any:
    if name not in request:
        raise ModelInputError(f"{name} is required")
    return request[name]


def handle_speech(request: dict[str, Any]) -> Result:
    """``tts_espeak``: {text, voice = "en", words_per_minute = 170} → WAV."""
    _only_fields(request, ("text", "voice", "words_per_minute"))
    audio = speech.synthesize_speech(
        _required(request, "text"),
        request.get("voice", "en"),
        request.get("words_per_minute", 170),
    )
    return audio, speech.CONTENT_TYPE


def handle_image(request: dict[str, Any]) -> Result:
    """``image_procedural``: {prompt, seed = 0, width = 512, height = 512} → PNG."""
    _only_fields(request, ("prompt", "seed", "width", "height"))
    png = image.render_image(
        _required(request, "prompt"),
        request.get("seed", 0),
        request.get("width", 512),
        request.get("height", 512),
    )
    return png, image.CONTENT_TYPE


def _input_image(request: Mapping[str, Any]) -> bytes:
    encoded = _required(request, "image_b64")
    if not isinstance(encoded, str):
        raise ModelInputError("image_b64 must be a base64 string")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ModelInputError("image_b64 is not valid base64") from exc


def handle_edit(request: dict[str, Any]) -> Result:
    """``image_edit``: {image_b64, prompt, seed = 0, strength = 0.6} → PNG."""
    _only_fields(request, ("image_b64", "prompt", "seed", "strength"))
    png = edit.edit_image(
        _input_image(request),
        _required(request, "prompt"),
        request.get("seed", 0),
        request.get("strength", edit.DEFAULT_STRENGTH),
    )
    return png, edit.CONTENT_TYPE


def handle_video(request: dict[str, Any]) -> Result:
    """``video_camera``: {image_b64, motion, duration_s, fps, width, height} → MP4."""
    _only_fields(request, ("image_b64", "motion", "duration_s", "fps", "width", "height"))
    mp4 = video.animate_image(
        _input_image(request),
        request.get("motion", "zoom_in"),
        request.get("duration_s", 3),
        request.get("fps", 12),
        request.get("width", 512),
        request.get("height", 512),
    )
    return mp4, video.CONTENT_TYPE


@dataclass(frozen=True)
class SandboxRequest:
    """A parsed ``sandbox`` request."""

    kind: str
    delay_ms: int
    outcome: str


def parse_sandbox_request(request: dict[str, Any], default_delay_ms: int) -> SandboxRequest:
    """Check a ``sandbox`` request; a null or absent delay_ms means ``default_delay_ms``."""
    _only_fields(request, ("kind", "delay_ms", "outcome"))
    kind = _required(request, "kind")
    if kind not in sandbox.SANDBOX_KINDS:
        raise ModelInputError(f"kind must be one of {', '.join(sandbox.SANDBOX_KINDS)}")
    delay_ms = request.get("delay_ms")
    if delay_ms is None:
        delay_ms = default_delay_ms
    if isinstance(delay_ms, bool) or not isinstance(delay_ms, int):
        raise ModelInputError("delay_ms must be an integer or null")
    if not 0 <= delay_ms <= MAX_SANDBOX_DELAY_MS:
        raise ModelInputError(f"delay_ms must be between 0 and {MAX_SANDBOX_DELAY_MS}")
    outcome = request.get("outcome", "completed")
    if outcome not in SANDBOX_OUTCOMES:
        raise ModelInputError(f"outcome must be one of {', '.join(SANDBOX_OUTCOMES)}")
    return SandboxRequest(kind=kind, delay_ms=delay_ms, outcome=outcome)


def sandbox_result(parsed: SandboxRequest) -> Result:
    """The answer to a sandbox request once its delay is over."""
    if parsed.outcome == "failed":
        raise SandboxFailedError("the sandbox job failed as requested (outcome: failed)")
    try:
        return sandbox.sandbox_example(parsed.kind)
    except NotImplementedError as exc:
        raise ModelInputError(f"the sandbox has no example for kind {parsed.kind!r} yet") from exc
