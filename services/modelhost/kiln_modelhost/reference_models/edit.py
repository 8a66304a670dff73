"""Image + prompt to image: a restyle of the given picture (the model of ``kiln/image-edit``).

The prompt's procedural style (kiln_modelhost.reference_models.image) is rendered at the size of
the input, then laid over the input's structure: the output keeps the input's light and dark
(its luminance, locally contrast-stretched) and its edges, and takes its colours from the style,
mixed in by ``strength`` (0: the input unchanged, 1: fully restyled). Deterministic for the same
(input pixels, prompt, seed, strength). The input is decoded with Pillow under a pixel cap, so a
decompression bomb is refused, not rendered.
"""

from __future__ import annotations

import io

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageFilter, UnidentifiedImageError

from kiln_modelhost.reference_models import image
from kiln_modelhost.reference_models.errors import ModelInputError

CONTENT_TYPE = "image/png"
MAX_INPUT_PIXELS = 4096 * 4096
MAX_OUTPUT_SIDE = 1024
DEFAULT_STRENGTH = 0.6


def decode_input_image(data: bytes, max_pixels: int = MAX_INPUT_PIXELS) -> Image.Image:
    """The input as an RGB Pillow image; ModelInputError when it is not a usable picture."""
    if not isinstance(data, bytes | bytearray) or not data:
        raise ModelInputError("the input image is empty")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
            if width * height > max_pixels:
                raise ModelInputError(f"the input image has more than {max_pixels} pixels")
            probe.verify()
        picture = Image.open(io.BytesIO(data))
        picture.load()
    except ModelInputError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise ModelInputError("the input is not a readable image (PNG, JPEG, WebP, GIF)") from None
    return picture.convert("RGB")


def output_size(width: int, height: int, max_side: int = MAX_OUTPUT_SIDE) -> tuple[int, int]:
    """The input's size scaled to fit ``max_side``, each side a multiple of 8 and at least 64."""
    scale = min(1.0, max_side / max(width, height))
    w = max(image.MIN_SIDE, int(width * scale) // image.SIDE_MULTIPLE * image.SIDE_MULTIPLE)
    h = max(image.MIN_SIDE, int(height * scale) // image.SIDE_MULTIPLE * image.SIDE_MULTIPLE)
    return w, h


def restyle_pixels(
    source: Image.Image, prompt: str, seed: int, strength: float
) -> NDArray[np.uint8]:
    if isinstance(strength, bool) or not isinstance(strength, int | float):
        raise ModelInputError("strength must be a number")
    if not 0.0 <= float(strength) <= 1.0:
        raise ModelInputError("strength must be between 0 and 1")
    width, height = output_size(*source.size)
    fitted = source.resize((width, height), Image.Resampling.LANCZOS)
    style = image.render_pixels(prompt, seed, width, height).astype(np.float32) / 255.0
    rgb = np.asarray(fitted, dtype=np.float32) / 255.0
    luminance = rgb @ np.asarray([0.2126, 0.7152, 0.0722], dtype=np.float32)
    low, high = np.percentile(luminance, [2.0, 98.0])
    tone = np.clip((luminance - low) / max(float(high - low), 1e-3), 0.0, 1.0)
    edges = np.asarray(fitted.convert("L").filter(ImageFilter.FIND_EDGES), dtype=np.float32)
    edges = np.clip(edges / 96.0, 0.0, 1.0)
    # The style's colours with the input's light: a dark style pixel over a bright input pixel
    # is lifted, and the input's edges are inked in the style's darkest tone.
    style_luma = style @ np.asarray([0.2126, 0.7152, 0.0722], dtype=np.float32)
    relit = style * ((0.25 + 0.85 * tone) / np.maximum(style_luma, 0.08))[..., None]
    relit = np.clip(relit, 0.0, 1.0) * (1.0 - 0.6 * edges)[..., None]
    amount = np.float32(strength)
    out = rgb * (1.0 - amount) + relit * amount
    pixels: NDArray[np.uint8] = np.clip(out * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)
    return pixels


def edit_image(
    data: bytes, prompt: str, seed: int = 0, strength: float = DEFAULT_STRENGTH
) -> bytes:
    """Restyle the picture ``data`` after ``prompt``; PNG bytes at the input's (fitted) size."""
    pixels = restyle_pixels(decode_input_image(data), prompt, seed, strength)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()
