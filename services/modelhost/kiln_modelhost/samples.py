"""The sample outputs shown in docs/models.md, made by the models themselves (the same functions
the Triton models run), from scikit-image's sample photos (a development dependency):

    uv run python -m kiln_modelhost.samples docs/models

Every file is written as the model returned it; the inputs are small so that the files are.
"""

from __future__ import annotations

import io
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from PIL import Image

from kiln_modelhost.reference_models import (
    autoclip,
    background,
    edit,
    image,
    neural_speech,
    speech,
    upscale,
    video,
)

SENTENCE = "Your order has shipped. It will reach the lighthouse on Thursday, weather permitting."


def _photo(name: str, size: tuple[int, int] | None = None) -> Image.Image:
    from skimage import data as samples

    picture = Image.fromarray(getattr(samples, name)()).convert("RGB")
    return picture.resize(size, Image.Resampling.LANCZOS) if size else picture


def _png(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _scenes_video(folder: Path) -> bytes:
    import imageio_ffmpeg

    path = folder / "scenes.mp4"
    writer = imageio_ffmpeg.write_frames(str(path), (320, 180), fps=12, macro_block_size=4)
    writer.send(None)
    for name, seconds in (("coffee", 2.5), ("chelsea", 2.0), ("rocket", 3.0), ("coins", 2.0)):
        picture = _photo(name)
        frames = round(seconds * 12)
        for index in range(frames):
            zoom = 1.0 + 0.2 * index / frames
            w, h = picture.width / zoom, picture.height / zoom
            x = (picture.width - w) * index / frames
            box = (x, (picture.height - h) / 2, x + w, (picture.height + h) / 2)
            writer.send(picture.resize((320, 180), Image.Resampling.BICUBIC, box=box).tobytes())
    writer.close()
    return path.read_bytes()


def make_samples(out: Path) -> dict[str, Any]:
    """Write every sample into ``out``; returns file name → what made it."""
    out.mkdir(parents=True, exist_ok=True)
    made: dict[str, Any] = {}

    def write(name: str, data: bytes, what: str) -> None:
        (out / name).write_bytes(data)
        made[name] = what

    coffee = _png(_photo("coffee", (360, 240)))
    write("coffee-input.png", coffee, "input: scikit-image's coffee photo, 360x240")
    write("speech.wav", neural_speech.speak(SENTENCE), "kiln/speech")
    if speech.espeak_available():
        write("text-to-speech.wav", speech.synthesize_speech(SENTENCE, "en", 160), "espeak-ng")
    write("remove-background.png", background.remove_background(coffee), "kiln/remove-background")
    write(
        "product-shot.png",
        background.product_shot(
            coffee, background="gradient", color="#ffffff", gradient_to="#cfd6df",
            aspect_ratio="4:5", size=480,
        ),
        "kiln/product-shot, gradient 4:5",
    )  # fmt: skip
    small = _png(_photo("coffee", (120, 80)))
    write("upscale-input.png", small, "input: the coffee photo at 120x80")
    write("upscale.png", upscale.upscale(small, 4, "compact"), "kiln/upscale x4")
    tiny = _png(_photo("coffee", (60, 40)))
    write("upscale-x4plus-input.png", tiny, "input: the coffee photo at 60x40")
    write("upscale-x4plus.png", upscale.upscale(tiny, 4, "x4plus"), "kiln/upscale-x4plus x4")
    with tempfile.TemporaryDirectory() as folder:
        source = _scenes_video(Path(folder))
    write("auto-clip-input.mp4", source, "input: four scenes of scikit-image photos, 9.5 s")
    archive = autoclip.auto_clip(
        source, {"min_duration_s": 1.5, "max_duration_s": 3, "max_clips": 3, "aspect_ratio": "1:1"}
    )
    write("auto-clip.zip", archive, "kiln/auto-clip, 1:1, 3 clips")
    with zipfile.ZipFile(io.BytesIO(archive)) as bundle:
        write("auto-clip-manifest.json", bundle.read("manifest.json"), "its manifest")
    render = image.render_image("a lighthouse in a storm", 3, 320, 240)
    write("prompt-to-image.png", render, "kiln/prompt-to-image: 'a lighthouse in a storm'")
    write("image-edit.png", edit.edit_image(coffee, "autumn fire", 2, 0.6), "kiln/image-edit")
    write(
        "image-to-video.mp4",
        video.animate_image(coffee, "zoom_in", 2, 12, 256, 176),
        "kiln/image-to-video",
    )
    return made


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/models")
    for name, what in make_samples(out).items():
        print(f"{out / name}: {what} ({(out / name).stat().st_size} bytes)")


if __name__ == "__main__":
    main()
