"""The procedural prompt-to-image renderer (kiln_modelhost.reference_models.image)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from kiln_modelhost.reference_models import image
from kiln_modelhost.reference_models.errors import ModelInputError
from kiln_modelhost.reference_models.image import render_image, render_pixels

CATALOG = Path(__file__).resolve().parents[3] / "libs/runtime/kiln_runtime/data/catalog.json"


def _decode(png: bytes) -> Image.Image:
    picture = Image.open(io.BytesIO(png))
    picture.load()
    return picture


def test_png_decodes_to_the_requested_size() -> None:
    png = render_image("a quiet harbour at dawn", 7, 640, 384)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    picture = _decode(png)
    assert picture.format == "PNG"
    assert picture.mode == "RGB"
    assert picture.size == (640, 384)


@pytest.mark.parametrize(("width", "height"), [(64, 64), (64, 1024), (1024, 64), (136, 200)])
def test_extreme_sizes(width: int, height: int) -> None:
    assert render_pixels("edge case", 1, width, height).shape == (height, width, 3)


def test_same_arguments_give_the_same_bytes() -> None:
    first = render_image("ocean waves in the storm", 42, 256, 256)
    second = render_image("ocean waves in the storm", 42, 256, 256)
    assert first == second


def test_prompt_case_and_spacing_do_not_matter() -> None:
    assert render_image("Ocean  Waves", 1, 128, 128) == render_image(" ocean waves ", 1, 128, 128)


def _difference(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_different_prompts_look_different() -> None:
    prompts = [
        "a red sunset over the ocean",
        "deep forest at night",
        "cosmic galaxy swirl",
        "sand and gold",
        "hello world",
        "quiet geometry",
    ]
    pictures = [render_pixels(prompt, 0, 128, 128) for prompt in prompts]
    for i in range(len(pictures)):
        for j in range(i + 1, len(pictures)):
            # mean absolute difference per channel, out of 255: clearly not the same picture
            assert _difference(pictures[i], pictures[j]) > 15.0, (prompts[i], prompts[j])


def test_seed_changes_the_composition() -> None:
    a = render_pixels("autumn leaves", 1, 128, 128)
    b = render_pixels("autumn leaves", 2, 128, 128)
    assert _difference(a, b) > 5.0


def test_colour_words_steer_the_palette() -> None:
    def mean_rgb(prompt: str) -> np.ndarray[Any, Any]:
        pixels = np.stack([render_pixels(prompt, seed, 96, 96) for seed in range(4)])
        return np.asarray(pixels.reshape(-1, 3).mean(axis=0), dtype=np.float64)

    red = mean_rgb("red fire")
    green = mean_rgb("green forest")
    assert red[0] > red[2]  # more red than blue
    assert green[1] > green[0]  # more green than red


def test_picture_is_not_flat() -> None:
    pixels = render_pixels("minimal", 3, 128, 128)
    assert pixels.std() > 10.0
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500


@pytest.mark.parametrize(
    ("prompt", "seed", "width", "height"),
    [
        ("", 0, 512, 512),
        ("   ", 0, 512, 512),
        ("x" * 1001, 0, 512, 512),
        (None, 0, 512, 512),
        ("ok", -1, 512, 512),
        ("ok", 2**32, 512, 512),
        ("ok", True, 512, 512),
        ("ok", 1.5, 512, 512),
        ("ok", 0, 56, 512),
        ("ok", 0, 1032, 512),
        ("ok", 0, 512, 100),
        ("ok", 0, "512", 512),
    ],
)
def test_invalid_arguments(prompt: Any, seed: Any, width: Any, height: Any) -> None:
    with pytest.raises(ModelInputError) as caught:
        render_image(prompt, seed, width, height)
    assert caught.value.code == "INVALID_INPUT"
    assert not caught.value.retryable
    assert str(caught.value).startswith("INVALID_INPUT: ")


def test_bounds_match_the_catalog() -> None:
    models = json.loads(CATALOG.read_text())["models"]
    schema = next(m for m in models if m["triton_model"] == "image_procedural")["input_schema"]
    props = schema["properties"]
    assert props["prompt"]["maxLength"] == image.MAX_PROMPT_CHARS
    assert props["seed"]["maximum"] == image.MAX_SEED
    for side in ("width", "height"):
        assert props[side]["minimum"] == image.MIN_SIDE
        assert props[side]["maximum"] == image.MAX_SIDE
        assert props[side]["multipleOf"] == image.SIDE_MULTIPLE
