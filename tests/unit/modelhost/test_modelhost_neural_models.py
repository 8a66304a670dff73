"""The pure parts of the neural models' handlers: option checks, auto-clip's scene-to-clip rules
and score, the product shot's canvas, the sandbox's archive. The networks themselves run in
tests/integration/modelhost on a real Triton server."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import numpy as np
import pytest

from kiln_modelhost import handlers
from kiln_modelhost.reference_models import autoclip, background, neural_speech, upscale
from kiln_modelhost.reference_models.errors import ModelInputError
from kiln_modelhost.reference_models.sandbox import sandbox_example

# --- auto-clip ---------------------------------------------------------------------------------

OPTIONS = autoclip.ClipOptions(min_duration_s=1.0, max_duration_s=2.0, max_clips=3)


def test_short_scenes_are_dropped_and_long_ones_cut() -> None:
    fps = 10.0
    scenes = [(0, 5), (5, 30), (30, 42)]  # 0.5 s, 2.5 s, 1.2 s
    scores = [0.0] * 42
    clips = autoclip.split_scenes(scenes, fps, scores, OPTIONS)
    assert [(c.start_frame, c.end_frame) for c in clips] == [(5, 25), (30, 42)]
    # the 0.5 s tail of the 2.5 s scene is shorter than min_duration_s: dropped


def test_motion_leaves_out_the_cut_frame() -> None:
    scores = [0.0, 50.0, 2.0, 4.0, 80.0, 6.0]
    (first, second) = autoclip.split_scenes(
        [(0, 4), (4, 6)], 2.0, scores, autoclip.ClipOptions(min_duration_s=0.5)
    )
    assert first.motion == pytest.approx((50 + 2 + 4) / 3)
    assert second.motion == pytest.approx(6.0)


def test_rank_by_the_documented_score() -> None:
    clips = [
        autoclip.Clip(0, 20, 0.0, 2.0, motion=5.0),  # long, calm: 0.7*0.5 + 0.3*1
        autoclip.Clip(20, 30, 2.0, 3.0, motion=10.0),  # short, lively: 0.7*1 + 0.3*0.5
        autoclip.Clip(30, 50, 3.0, 5.0, motion=0.0),  # long, still: 0.3
        autoclip.Clip(50, 70, 5.0, 7.0, motion=5.0),  # ties with the first: later
    ]
    ranked = autoclip.rank_clips(clips, OPTIONS)
    assert [(c.start_frame, score) for c, score, _ in ranked] == [(20, 0.85), (0, 0.65), (50, 0.65)]
    assert autoclip.SCORE_FORMULA == "0.7 * motion + 0.3 * duration_s / max_duration_s"


@pytest.mark.parametrize(
    ("aspect", "size", "expected"),
    [
        ("9:16", (1920, 1080), "crop=608:1080:656:0,scale=608:1080"),
        ("1:1", (1920, 1080), "crop=1080:1080:420:0,scale=1080:1080"),
        ("16:9", (1080, 1920), "crop=1080:608:0:656,scale=1080:608"),
        ("original", (640, 360), "crop=640:360:0:0,scale=640:360"),
    ],
)
def test_crop_filter(aspect: str, size: tuple[int, int], expected: str) -> None:
    assert autoclip.crop_filter(*size, aspect, 1080).startswith(expected)


@pytest.mark.parametrize(
    "request_",
    [
        {"min_duration_s": 5, "max_duration_s": 2},
        {"aspect_ratio": "21:9"},
        {"max_clips": 0},
        {"max_clips": True},
        {"max_side": 64},
        {"threshold": 1},
        {"min_duration_s": "2"},
    ],
)
def test_auto_clip_options_are_checked(request_: dict[str, Any]) -> None:
    with pytest.raises(ModelInputError):
        autoclip.check_options(request_)


def test_an_empty_video_is_invalid() -> None:
    with pytest.raises(ModelInputError):
        autoclip.auto_clip(b"", {})
    with pytest.raises(ModelInputError):
        autoclip.auto_clip(b"not a video at all", {})


# --- product shot, background removal ----------------------------------------------------------


@pytest.mark.parametrize(
    ("aspect", "size", "expected"),
    [("1:1", 1024, (1024, 1024)), ("4:5", 1000, (800, 1000)), ("16:9", 1280, (1280, 720))],
)
def test_canvas_size(aspect: str, size: int, expected: tuple[int, int]) -> None:
    assert background.canvas_size(aspect, size) == expected


@pytest.mark.parametrize(
    ("aspect", "size"), [("5:4", 1024), ("1:1", 100), ("1:1", 4096), ("1:1", True)]
)
def test_canvas_size_is_checked(aspect: str, size: Any) -> None:
    with pytest.raises(ModelInputError):
        background.canvas_size(aspect, size)


@pytest.mark.parametrize("colour", ["red", "#fff", "#12345g", 0xFFFFFF, "#1234567"])
def test_colours_are_hex(colour: Any) -> None:
    with pytest.raises(ModelInputError):
        background.parse_colour(colour, "color")
    assert background.parse_colour("#1E90ff", "color") == (30, 144, 255)


def test_subject_box() -> None:
    alpha = np.zeros((10, 20), dtype=np.uint8)
    alpha[2:5, 3:9] = 255
    alpha[7, 15] = 100  # faint: not the subject
    assert background.subject_box(alpha) == (3, 2, 9, 5)


def test_product_shot_options_are_checked_before_the_network_runs() -> None:
    for changes in (
        {"background": "marble"},
        {"padding": 0.5},
        {"shadow": "yes"},
        {"background": "white", "background_image": b"x"},
    ):
        with pytest.raises(ModelInputError):
            background.product_shot(b"unused", **changes)  # type: ignore[arg-type]


# --- speech, upscale ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("voice", "speed", "seed"),
    [("emma", 1.0, 0), ("heart", 0.2, 0), ("heart", 3, 0), ("heart", True, 0), ("heart", 1, -1)],
)
def test_speech_options_are_checked(voice: Any, speed: Any, seed: Any) -> None:
    with pytest.raises(ModelInputError):
        neural_speech.check_options(voice, speed, seed)


def test_speech_text_is_checked() -> None:
    for text in ("", "   ", "\x00\x01", 12, "a" * 2001):
        with pytest.raises(ModelInputError):
            neural_speech.speak(text)  # type: ignore[arg-type]


@pytest.mark.parametrize(("scale", "network"), [(3, "compact"), (True, "compact"), (2, "ultra")])
def test_upscale_options_are_checked(scale: Any, network: Any) -> None:
    with pytest.raises(ModelInputError):
        upscale.check_options(scale, network)


@pytest.mark.parametrize(
    ("handler", "request_"),
    [
        (handlers.handle_neural_speech, {"text": "hi", "pitch": 2}),
        (handlers.handle_remove_background, {"image_b64": "", "mask": True}),
        (handlers.upscale_handler("compact"), {"image_b64": "", "factor": 2}),
        (handlers.handle_auto_clip, {"video_b64": "", "clips": 2}),
        (handlers.handle_product_shot, {"image_b64": "", "shadows": True}),
        (handlers.handle_auto_clip, {"max_clips": 2}),
        (handlers.handle_remove_background, {"image_b64": "!!"}),
    ],
)
def test_handlers_refuse_unknown_or_missing_fields(handler: Any, request_: dict[str, Any]) -> None:
    with pytest.raises(ModelInputError):
        handler(request_)


# --- sandbox -----------------------------------------------------------------------------------


def test_the_sandbox_archive_has_the_auto_clip_shape() -> None:
    data, content_type = sandbox_example("video", "application/zip")
    assert content_type == "application/zip"
    with zipfile.ZipFile(io.BytesIO(data)) as bundle:
        assert bundle.namelist() == ["clip-01.mp4", "manifest.json"]
        manifest = json.loads(bundle.read("manifest.json"))
        assert bundle.read("clip-01.mp4")[4:8] == b"ftyp"
    assert manifest["clips"][0]["file"] == "clip-01.mp4"
    assert manifest["sandbox"] is True


def test_the_sandbox_request_takes_a_content_type() -> None:
    parsed = handlers.parse_sandbox_request({"kind": "video", "content_type": "application/zip"}, 0)
    assert parsed.content_type == "application/zip"
    with pytest.raises(ModelInputError):
        handlers.parse_sandbox_request({"kind": "video", "content_type": "text/html"}, 0)


def test_camera_move_boxes_stay_inside_the_picture() -> None:
    """A 360x240 picture filmed at 256x176: the box's height came out a hair over 240 before
    the clamp, and Pillow refused the negative offset."""
    from kiln_modelhost.reference_models.video import MOTIONS, crop_box

    for motion in MOTIONS:
        for step in range(11):
            left, top, right, bottom = crop_box(motion, step / 10, 360, 240, 256 / 176)
            assert 0 <= left < right <= 360 and 0 <= top < bottom <= 240
