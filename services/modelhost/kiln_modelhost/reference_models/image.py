"""Prompt to image: a procedural renderer of abstract art (the model of ``kiln/prompt-to-image``).

Nothing here is a learned model. The prompt is hashed (SHA-256) into a style: a palette whose base
hue follows colour and mood words found in the prompt (``ocean``, ``fire``, ``forest``, ``night``…)
or else the hash, a colour scheme, a kind of picture (domain-warped "flow", "contour" lines or
"cells"), and a set of soft shapes. The seed varies the composition within that style. The pixels
are computed with numpy from hashed-lattice value noise, so the same (prompt, seed, width, height)
always gives the same PNG bytes, on any machine and numpy version, and two prompts give visibly
different pictures. It draws only abstract forms: no people, no faces, no text.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import math
import random
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from kiln_modelhost.reference_models.errors import ModelInputError

FloatArray = NDArray[np.float32]
CONTENT_TYPE = "image/png"
MAX_PROMPT_CHARS = 1000
MIN_SIDE = 64
MAX_SIDE = 1024
SIDE_MULTIPLE = 8
MAX_SEED = 2**32 - 1
STYLE_VERSION = b"kiln/procedural-image/v1"
#: how much smaller the low-frequency warp fields are computed than the picture
_WARP_DOWNSCALE = 4
_PNG_COMPRESS_LEVEL = 6

StyleKind = Literal["flow", "contour", "cells"]
ShapeKind = Literal["disc", "ring", "band"]

# Words that steer the palette: (hue in turns, lightness shift). Matched as whole words.
_HUE_WORDS: dict[str, tuple[float, float]] = {
    "red": (0.0, 0.0),
    "crimson": (0.97, -0.05),
    "rose": (0.93, 0.05),
    "pink": (0.92, 0.1),
    "candy": (0.9, 0.1),
    "fire": (0.03, 0.0),
    "flame": (0.04, 0.0),
    "lava": (0.02, -0.08),
    "sunset": (0.06, 0.0),
    "orange": (0.08, 0.0),
    "autumn": (0.07, -0.03),
    "gold": (0.12, 0.05),
    "golden": (0.12, 0.05),
    "desert": (0.1, 0.08),
    "sand": (0.11, 0.1),
    "yellow": (0.15, 0.08),
    "sun": (0.13, 0.1),
    "lime": (0.23, 0.05),
    "spring": (0.27, 0.08),
    "grass": (0.3, 0.0),
    "leaf": (0.31, 0.0),
    "green": (0.33, 0.0),
    "forest": (0.36, -0.08),
    "jungle": (0.38, -0.05),
    "emerald": (0.42, -0.03),
    "mint": (0.44, 0.1),
    "teal": (0.5, -0.02),
    "ice": (0.53, 0.15),
    "winter": (0.56, 0.12),
    "water": (0.55, 0.0),
    "sea": (0.57, -0.03),
    "ocean": (0.58, -0.05),
    "sky": (0.57, 0.12),
    "blue": (0.61, 0.0),
    "storm": (0.62, -0.12),
    "night": (0.66, -0.18),
    "midnight": (0.67, -0.2),
    "space": (0.7, -0.2),
    "galaxy": (0.74, -0.15),
    "cosmic": (0.76, -0.12),
    "violet": (0.77, 0.0),
    "purple": (0.78, -0.03),
    "lavender": (0.75, 0.15),
    "magenta": (0.85, 0.0),
}
_WORD_RE = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class _Shape:
    kind: ShapeKind
    cx: float
    cy: float
    size: float
    width: float
    angle: float
    softness: float
    alpha: float
    colour: int


@dataclass(frozen=True)
class _Style:
    kind: StyleKind
    palette: tuple[tuple[float, float, float], ...]
    frequency: float
    warp: float
    octaves: int
    offsets: tuple[float, ...]
    salt: int
    bands: float
    cells: tuple[tuple[float, float, float], ...]
    shapes: tuple[_Shape, ...]
    vignette: float
    grain: float


def normalize_prompt(prompt: str) -> str:
    """The form of the prompt that the picture depends on: case and spacing do not matter."""
    return " ".join(prompt.lower().split())


def _check_args(prompt: object, seed: object, width: object, height: object) -> str:
    if not isinstance(prompt, str):
        raise ModelInputError("prompt must be a string")
    normalized = normalize_prompt(prompt)
    if not normalized:
        raise ModelInputError("prompt must not be empty")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ModelInputError(f"prompt must be at most {MAX_PROMPT_CHARS} characters")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ModelInputError(f"seed must be an integer between 0 and {MAX_SEED}")
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ModelInputError(f"{name} must be an integer")
        if not MIN_SIDE <= value <= MAX_SIDE or value % SIDE_MULTIPLE:
            raise ModelInputError(
                f"{name} must be a multiple of {SIDE_MULTIPLE} between {MIN_SIDE} and {MAX_SIDE}"
            )
    return normalized


def _rng(*parts: bytes) -> random.Random:
    # random.Random(int).random() is guaranteed to give the same sequence on every Python version.
    digest = hashlib.sha256(b"\x00".join((STYLE_VERSION, *parts))).digest()
    return random.Random(int.from_bytes(digest, "big"))


def _pick(rng: random.Random, count: int) -> int:
    return min(int(rng.random() * count), count - 1)


def _between(rng: random.Random, low: float, high: float) -> float:
    return low + (high - low) * rng.random()


def _palette(normalized: str, rng: random.Random) -> tuple[tuple[float, float, float], ...]:
    hits = [_HUE_WORDS[word] for word in _WORD_RE.findall(normalized) if word in _HUE_WORDS]
    schemes: tuple[tuple[float, ...], ...] = (
        (0.0, 0.05, -0.05, 0.1, -0.08),  # analogous
        (0.0, 0.5, 0.02, 0.48, 0.0),  # complementary
        (0.0, 1 / 3, 2 / 3, 0.0, 1 / 3),  # triadic
        (0.0, 0.42, 0.58, 0.04, 0.5),  # split complementary
        (0.0, 0.0, 0.08, 0.0, -0.06),  # near monochrome
    )
    scheme = schemes[_pick(rng, len(schemes))]
    if hits:
        # The first colour word sets the base hue; the one furthest from it sets the accent.
        base_hue = (hits[0][0] + _between(rng, -0.02, 0.02)) % 1.0
        light_shift = sum(shift for _, shift in hits) / len(hits)
        accent = max(((hue - hits[0][0] + 0.5) % 1.0 - 0.5 for hue, _ in hits), key=abs)
        if abs(accent) > 0.04:
            scheme = (0.0, accent, 0.03, accent - 0.03, -0.03)
        elif scheme not in (schemes[0], schemes[4]):
            scheme = schemes[0]  # one colour named: keep to its neighbourhood
    else:
        base_hue = rng.random()
        light_shift = _between(rng, -0.1, 0.1)
    count = 5
    saturation = _between(rng, 0.45, 0.9)
    lightness = [
        min(0.92, max(0.05, 0.1 + 0.8 * i / (count - 1) + light_shift + _between(rng, -0.05, 0.05)))
        for i in range(count)
    ]
    lightness.sort()
    stops = []
    for i in range(count):
        hue = (base_hue + scheme[i % len(scheme)] + _between(rng, -0.015, 0.015)) % 1.0
        sat = min(1.0, max(0.15, saturation + _between(rng, -0.15, 0.15)))
        stops.append(colorsys.hls_to_rgb(hue, lightness[i], sat))
    return tuple(stops)


def _style(normalized: str, seed: int) -> _Style:
    prompt_bytes = normalized.encode("utf-8")
    looks = _rng(b"prompt", prompt_bytes)  # what the prompt decides
    layout = _rng(b"layout", prompt_bytes, seed.to_bytes(8, "big"))  # what the seed varies
    palette = _palette(normalized, looks)
    kinds: tuple[StyleKind, ...] = ("flow", "contour", "cells")
    kind = kinds[_pick(looks, len(kinds))]
    frequency = _between(looks, 1.6, 3.4)
    warp = _between(looks, 0.6, 2.2)
    octaves = 4 + _pick(looks, 2)
    bands = _between(looks, 6.0, 16.0)
    vignette = _between(looks, 0.15, 0.45)
    grain = _between(looks, 0.006, 0.02)
    offsets = tuple(_between(layout, -500.0, 500.0) for _ in range(10))
    salt = int(layout.random() * 2**32) & 0xFFFFFFFF
    cells = tuple(
        (layout.random(), layout.random(), layout.random()) for _ in range(8 + _pick(looks, 16))
    )
    shape_kinds: tuple[ShapeKind, ...] = ("disc", "ring", "band")
    shapes = tuple(
        _Shape(
            kind=shape_kinds[_pick(layout, len(shape_kinds))],
            cx=_between(layout, 0.1, 0.9),
            cy=_between(layout, 0.1, 0.9),
            size=_between(layout, 0.06, 0.32),
            width=_between(layout, 0.01, 0.06),
            angle=_between(layout, 0.0, math.pi),
            softness=_between(layout, 0.004, 0.05),
            alpha=_between(layout, 0.25, 0.75),
            colour=_pick(layout, len(palette)),
        )
        for _ in range(2 + _pick(layout, 5))
    )
    return _Style(
        kind=kind,
        palette=palette,
        frequency=frequency,
        warp=warp,
        octaves=octaves,
        offsets=offsets,
        salt=salt,
        bands=bands,
        cells=cells,
        shapes=shapes,
        vignette=vignette,
        grain=grain,
    )


# --- noise -------------------------------------------------------------------------------------


def _hash01(ix: NDArray[np.int64], iy: NDArray[np.int64], salt: int) -> FloatArray:
    """A well-mixed integer hash of lattice points, as floats in [0, 1)."""
    x = (ix & 0xFFFFFFFF).astype(np.uint32)
    y = (iy & 0xFFFFFFFF).astype(np.uint32)
    h = (x * np.uint32(0x8DA6B343)) ^ (y * np.uint32(0xD8163841)) ^ np.uint32(salt)
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x7FEB352D)
    h ^= h >> np.uint32(15)
    h *= np.uint32(0x846CA68B)
    h ^= h >> np.uint32(16)
    return (h >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / (1 << 24))


def _value_noise(x: FloatArray, y: FloatArray, salt: int) -> FloatArray:
    x0 = np.floor(x)
    y0 = np.floor(y)
    fx = x - x0
    fy = y - y0
    sx = fx * fx * (np.float32(3.0) - np.float32(2.0) * fx)
    sy = fy * fy * (np.float32(3.0) - np.float32(2.0) * fy)
    ix = x0.astype(np.int64)
    iy = y0.astype(np.int64)
    v00 = _hash01(ix, iy, salt)
    v10 = _hash01(ix + 1, iy, salt)
    v01 = _hash01(ix, iy + 1, salt)
    v11 = _hash01(ix + 1, iy + 1, salt)
    top = v00 + (v10 - v00) * sx
    bottom = v01 + (v11 - v01) * sx
    result: FloatArray = top + (bottom - top) * sy
    return result


def _fbm(x: FloatArray, y: FloatArray, octaves: int, salt: int) -> FloatArray:
    """Fractal value noise in about [0, 1]."""
    total = np.zeros_like(x)
    amplitude = 0.5
    norm = 0.0
    frequency = 1.0
    for octave in range(octaves):
        # rotate each octave a little so that the lattice does not show
        angle = 0.5 * (octave + 1)
        ca, sa = np.float32(math.cos(angle) * frequency), np.float32(math.sin(angle) * frequency)
        total += np.float32(amplitude) * _value_noise(
            x * ca - y * sa, x * sa + y * ca, (salt + 0x9E3779B9 * (octave + 1)) & 0xFFFFFFFF
        )
        norm += amplitude
        amplitude *= 0.5
        frequency *= 2.03
    result: FloatArray = total / np.float32(norm)
    return result


def _grid(width: int, height: int, step: int = 1) -> tuple[FloatArray, FloatArray]:
    """Picture coordinates, the shorter side spanning [0, 1], sampled every ``step`` pixels."""
    scale = 1.0 / min(width, height)
    xs = (np.arange(0, width, step, dtype=np.float32) + np.float32(0.5 * step)) * np.float32(scale)
    ys = (np.arange(0, height, step, dtype=np.float32) + np.float32(0.5 * step)) * np.float32(scale)
    gx, gy = np.meshgrid(xs, ys)
    return gx, gy


def _upsample(field: FloatArray, width: int, height: int) -> FloatArray:
    resized = Image.fromarray(field, mode="F").resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def _stretch(field: FloatArray) -> FloatArray:
    low, high = np.percentile(field, (1.0, 99.0))
    span = max(float(high - low), 1e-6)
    result: FloatArray = np.clip((field - np.float32(low)) / np.float32(span), 0.0, 1.0)
    return result


def _smoothstep(edge0: float, edge1: float, x: FloatArray) -> FloatArray:
    t = np.clip((x - np.float32(edge0)) / np.float32(edge1 - edge0), 0.0, 1.0)
    result: FloatArray = t * t * (np.float32(3.0) - np.float32(2.0) * t)
    return result


def _mix(base: FloatArray, top: FloatArray, amount: FloatArray) -> FloatArray:
    """``base`` blended towards ``top`` by ``amount`` (0 keeps base, 1 gives top)."""
    return np.asarray(base * (np.float32(1.0) - amount) + top * amount, dtype=np.float32)


def _apply_palette(t: FloatArray, palette: tuple[tuple[float, float, float], ...]) -> FloatArray:
    stops = np.asarray(palette, dtype=np.float32)
    position = np.clip(t, 0.0, 1.0) * np.float32(len(stops) - 1)
    index = np.minimum(position.astype(np.int64), len(stops) - 2)
    frac = (position - index)[..., None]
    result: FloatArray = stops[index] * (np.float32(1.0) - frac) + stops[index + 1] * frac
    return result


# --- layers ------------------------------------------------------------------------------------


def _warp_fields(style: _Style, width: int, height: int) -> tuple[FloatArray, FloatArray]:
    """Two smooth displacement fields (computed small, then scaled up: they have no fine detail)."""
    gx, gy = _grid(width, height, _WARP_DOWNSCALE)
    f = np.float32(style.frequency)
    o = style.offsets
    qx = _fbm(gx * f + np.float32(o[0]), gy * f + np.float32(o[1]), 3, style.salt ^ 0x1111)
    qy = _fbm(gx * f + np.float32(o[2]), gy * f + np.float32(o[3]), 3, style.salt ^ 0x2222)
    w = np.float32(style.warp)
    rx = _fbm(gx * f + w * qx + np.float32(o[4]), gy * f + w * qy, 3, style.salt ^ 0x3333)
    ry = _fbm(gx * f + w * qx, gy * f + w * qy + np.float32(o[5]), 3, style.salt ^ 0x4444)
    return _upsample(rx, width, height), _upsample(ry, width, height)


def _base_layer(style: _Style, width: int, height: int) -> tuple[FloatArray, FloatArray]:
    """The picture before shapes, and the scalar field that shapes use to roughen their edges."""
    gx, gy = _grid(width, height)
    rx, ry = _warp_fields(style, width, height)
    f = np.float32(style.frequency)
    w = np.float32(style.warp * 1.5)
    field = _fbm(
        gx * f + w * rx + np.float32(style.offsets[6]),
        gy * f + w * ry + np.float32(style.offsets[7]),
        style.octaves,
        style.salt,
    )
    t = _stretch(field)
    if style.kind == "flow":
        colour = _apply_palette(t, style.palette)
        accent = _apply_palette(_stretch(rx), style.palette[::-1])
        mix = (_smoothstep(0.3, 0.9, ry) * np.float32(0.45))[..., None]
        colour = _mix(colour, accent, mix)
    elif style.kind == "contour":
        colour = _apply_palette(_stretch(rx * np.float32(0.6) + t * np.float32(0.4)), style.palette)
        phase = t * np.float32(style.bands)
        distance = np.abs(phase - np.round(phase))
        line = (np.float32(1.0) - _smoothstep(0.03, 0.09, distance))[..., None]
        ink = np.asarray(style.palette[-1] if t.mean() < 0.5 else style.palette[0], np.float32)
        colour = _mix(colour, ink, line * np.float32(0.8))
    else:  # cells
        aspect_x = width / min(width, height)
        aspect_y = height / min(width, height)
        px = gx + (rx - np.float32(0.5)) * np.float32(0.12)
        py = gy + (ry - np.float32(0.5)) * np.float32(0.12)
        nearest = np.full_like(gx, np.inf)
        second = np.full_like(gx, np.inf)
        value = np.zeros_like(gx)
        for cell_x, cell_y, cell_value in style.cells:
            ddx = px - np.float32(cell_x * aspect_x)
            ddy = py - np.float32(cell_y * aspect_y)
            d = ddx * ddx + ddy * ddy
            closer = d < nearest
            second = np.where(closer, nearest, np.minimum(second, d))
            nearest = np.where(closer, d, nearest)
            value = np.where(closer, np.float32(cell_value), value)
        edge = np.sqrt(second) - np.sqrt(nearest)
        shade = _smoothstep(0.0, 0.05, edge)
        tone = np.clip(value * np.float32(0.8) + t * np.float32(0.2), 0.0, 1.0)
        colour = (
            _apply_palette(tone, style.palette)
            * (np.float32(0.55) + np.float32(0.45) * shade)[..., None]
        )
    return colour.astype(np.float32), t


def _draw_shapes(
    colour: FloatArray, roughness: FloatArray, style: _Style, width: int, height: int
) -> FloatArray:
    gx, gy = _grid(width, height)
    aspect_x = width / min(width, height)
    aspect_y = height / min(width, height)
    wobble = (roughness - np.float32(0.5)) * np.float32(0.04)
    for shape in style.shapes:
        dx = gx - np.float32(shape.cx * aspect_x)
        dy = gy - np.float32(shape.cy * aspect_y)
        if shape.kind == "band":
            distance = np.abs(
                dx * np.float32(math.sin(shape.angle)) - dy * np.float32(math.cos(shape.angle))
            )
            signed = distance + wobble - np.float32(shape.width * 1.5)
        else:
            radius = np.sqrt(dx * dx + dy * dy) + wobble
            if shape.kind == "disc":
                signed = radius - np.float32(shape.size)
            else:
                signed = np.abs(radius - np.float32(shape.size)) - np.float32(shape.width)
        mask = (np.float32(1.0) - _smoothstep(-shape.softness, shape.softness, signed))[..., None]
        ink = np.asarray(style.palette[shape.colour], dtype=np.float32)
        alpha = mask * np.float32(shape.alpha)
        colour = _mix(colour, ink, alpha)
    return colour


def _finish(colour: FloatArray, style: _Style, width: int, height: int) -> NDArray[np.uint8]:
    gx, gy = _grid(width, height)
    cx = np.float32(0.5 * width / min(width, height))
    cy = np.float32(0.5 * height / min(width, height))
    falloff = ((gx - cx) ** 2 + (gy - cy) ** 2) / (cx * cx + cy * cy)
    colour = colour * (np.float32(1.0) - np.float32(style.vignette) * falloff)[..., None]
    iy, ix = np.mgrid[0:height, 0:width].astype(np.int64)
    grain = (_hash01(ix, iy, style.salt ^ 0x5A5A5A5A) - np.float32(0.5)) * np.float32(
        2.0 * style.grain
    )
    colour = colour + grain[..., None]
    return np.clip(colour * np.float32(255.0) + np.float32(0.5), 0.0, 255.0).astype(np.uint8)


def render_pixels(prompt: str, seed: int, width: int, height: int) -> NDArray[np.uint8]:
    """The picture for ``prompt`` and ``seed`` as an RGB array of shape (height, width, 3)."""
    normalized = _check_args(prompt, seed, width, height)
    style = _style(normalized, seed)
    colour, roughness = _base_layer(style, width, height)
    colour = _draw_shapes(colour, roughness, style, width, height)
    return _finish(colour, style, width, height)


def render_image(prompt: str, seed: int, width: int, height: int) -> bytes:
    """Render an abstract picture for ``prompt`` as PNG bytes.

    Deterministic for (prompt, seed, width, height); the prompt's case and spacing do not matter.
    Raises ModelInputError when an argument is outside the catalog's bounds.
    """
    pixels = render_pixels(prompt, seed, width, height)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(
        buffer, format="PNG", compress_level=_PNG_COMPRESS_LEVEL
    )
    return buffer.getvalue()
