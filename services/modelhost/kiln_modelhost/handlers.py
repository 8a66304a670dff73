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
from kiln_modelhost.reference_models import (
    autoclip,
    background,
    edit,
    image,
    neural_speech,
    sandbox,
    speech,
    upscale,
    video,
)
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


def handle_neural_speech(request: dict[str, Any]) -> Result:
    """``tts_hibari``: {text, voice = "heart", speed = 1.0, seed = 0} → WAV (24 kHz)."""
    _only_fields(request, ("text", "voice", "speed", "seed"))
    audio = neural_speech.speak(
        _required(request, "text"),
        request.get("voice", "heart"),
        request.get("speed", 1.0),
        request.get("seed", 0),
    )
    return audio, neural_speech.CONTENT_TYPE


def _file(request: Mapping[str, Any], name: str) -> bytes:
    encoded = _required(request, name)
    if not isinstance(encoded, str):
        raise ModelInputError(f"{name} must be a base64 string")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ModelInputError(f"{name} is not valid base64") from exc


def _input_image(request: Mapping[str, Any]) -> bytes:
    return _file(request, "image_b64")


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


def handle_remove_background(request: dict[str, Any]) -> Result:
    """``background_u2netp``: {image_b64, edges = "soft", crop = false} → PNG with alpha."""
    _only_fields(request, ("image_b64", "edges", "crop"))
    png = background.remove_background(
        _input_image(request), request.get("edges", "soft"), request.get("crop", False)
    )
    return png, background.CONTENT_TYPE


def handle_product_shot(request: dict[str, Any]) -> Result:
    """``product_shot_u2netp``: {image_b64, background, color, gradient_to, background_b64,
    aspect_ratio, size, padding, shadow} → PNG."""
    _only_fields(
        request,
        ("image_b64", "background", "color", "gradient_to", "background_b64", "aspect_ratio",
         "size", "padding", "shadow"),
    )  # fmt: skip
    backdrop = _file(request, "background_b64") if "background_b64" in request else None
    png = background.product_shot(
        _input_image(request),
        background=request.get("background", "white"),
        color=request.get("color", "#f2f2f2"),
        gradient_to=request.get("gradient_to", "#d9dde3"),
        background_image=backdrop,
        aspect_ratio=request.get("aspect_ratio", "1:1"),
        size=request.get("size", 1024),
        padding=request.get("padding", 0.1),
        shadow=request.get("shadow", True),
    )
    return png, background.CONTENT_TYPE


def upscale_handler(network: str) -> Handler:
    """``upscale_realesr_compact`` / ``upscale_realesrgan_x4plus``: {image_b64, scale = 4}."""

    def handle_upscale(request: dict[str, Any]) -> Result:
        _only_fields(request, ("image_b64", "scale"))
        png = upscale.upscale(_input_image(request), request.get("scale", 4), network)
        return png, upscale.CONTENT_TYPE

    return handle_upscale


def handle_auto_clip(request: dict[str, Any]) -> Result:
    """``autoclip_scenedetect``: {video_b64, min_duration_s, max_duration_s, aspect_ratio,
    max_clips, max_side, threshold} → ZIP of clips and manifest.json."""
    _only_fields(
        request,
        ("video_b64", "min_duration_s", "max_duration_s", "aspect_ratio", "max_clips",
         "max_side", "threshold"),
    )  # fmt: skip
    video_bytes = _file(request, "video_b64")
    options = {k: v for k, v in request.items() if k != "video_b64"}
    return autoclip.auto_clip(video_bytes, options), autoclip.CONTENT_TYPE


@dataclass(frozen=True)
class SandboxRequest:
    """A parsed ``sandbox`` request."""

    kind: str
    delay_ms: int
    outcome: str
    # the real model's content type, when the kind alone does not say it (auto-clip's ZIP)
    content_type: str | None = None


def parse_sandbox_request(request: dict[str, Any], default_delay_ms: int) -> SandboxRequest:
    """Check a ``sandbox`` request; a null or absent delay_ms means ``default_delay_ms``."""
    _only_fields(request, ("kind", "delay_ms", "outcome", "content_type"))
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
    content_type = request.get("content_type")
    if content_type is not None and content_type not in sandbox.SANDBOX_CONTENT_TYPES:
        raise ModelInputError(
            f"content_type must be one of {', '.join(sandbox.SANDBOX_CONTENT_TYPES)}"
        )
    return SandboxRequest(kind=kind, delay_ms=delay_ms, outcome=outcome, content_type=content_type)


def sandbox_result(parsed: SandboxRequest) -> Result:
    """The answer to a sandbox request once its delay is over."""
    if parsed.outcome == "failed":
        raise SandboxFailedError("the sandbox job failed as requested (outcome: failed)")
    try:
        return sandbox.sandbox_example(parsed.kind, parsed.content_type)
    except NotImplementedError as exc:
        raise ModelInputError(f"the sandbox has no example for kind {parsed.kind!r} yet") from exc
