"""docs/models.md keeps up with the catalog: every model is described, every sample it links
is committed, and each sample is a file of the kind its model returns."""

from __future__ import annotations

import io
import json
import re
import wave
import zipfile
from pathlib import Path

from PIL import Image

from kiln_runtime.catalog import load_catalog

DOCS = Path(__file__).resolve().parents[3] / "docs"
MODELS_MD = (DOCS / "models.md").read_text()


def test_every_catalog_model_is_described() -> None:
    for entry in load_catalog().models:
        assert f"`{entry.id}`" in MODELS_MD, entry.id


def test_every_linked_sample_is_committed() -> None:
    links = set(re.findall(r"\]\((models/[^)]+)\)", MODELS_MD))
    assert len(links) >= 12
    for link in links:
        assert (DOCS / link).is_file(), link


def test_the_samples_are_what_their_models_return() -> None:
    folder = DOCS / "models"
    for name in ("remove-background.png", "product-shot.png", "upscale.png", "prompt-to-image.png"):
        Image.open(folder / name).verify()
    assert Image.open(folder / "remove-background.png").mode == "RGBA"
    small = Image.open(folder / "upscale-input.png").size
    assert Image.open(folder / "upscale.png").size == (small[0] * 4, small[1] * 4)
    with wave.open(str(folder / "speech.wav")) as reader:
        assert reader.getframerate() == 24_000 and reader.getnframes() > 24_000
    for name in ("image-to-video.mp4", "auto-clip-input.mp4"):
        assert (folder / name).read_bytes()[4:8] == b"ftyp"
    with zipfile.ZipFile(io.BytesIO((folder / "auto-clip.zip").read_bytes())) as bundle:
        manifest = json.loads(bundle.read("manifest.json"))
        assert [c["file"] for c in manifest["clips"]] == sorted(
            n for n in bundle.namelist() if n.endswith(".mp4")
        )
