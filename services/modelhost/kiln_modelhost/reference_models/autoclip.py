"""Auto-clip (the model of ``kiln/auto-clip``): cut a video at its scene changes and return the
best clips, cropped to an aspect ratio, as one ZIP archive.

Scene changes come from PySceneDetect's ``ContentDetector`` (``scenedetect-headless``,
BSD-3-Clause; no learned weights): a cut where the frame-to-frame change in hue, saturation and
luma passes ``threshold``. Its per-frame score (``content_val``) is kept to rate each clip.

From scenes to clips:

1. A scene shorter than ``min_duration_s`` is dropped; a longer one than ``max_duration_s`` is
   cut into consecutive pieces of ``max_duration_s`` (a last piece shorter than
   ``min_duration_s`` is dropped).
2. Each clip gets a **score** in [0, 1]: ``0.7 · motion + 0.3 · length``, where ``motion`` is
   the clip's mean frame-to-frame change (``content_val``, the cut frame left out) divided by
   the largest such mean among the clips, and ``length`` is its duration divided by
   ``max_duration_s``. Lively, long clips rank first; ties go to the earlier clip.
3. The ``max_clips`` best are cut with ffmpeg (H.264, yuv420p, AAC audio when there is audio),
   centre-cropped to ``aspect_ratio`` (``original`` keeps the frame) and scaled so that the
   longer side is at most ``max_side``.

The archive holds ``clip-01.mp4`` … (by rank) and ``manifest.json``: the source's duration,
size and frame rate, the score formula, and per clip its file, rank, start, end, duration,
score and motion.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import imageio_ffmpeg

from kiln_modelhost.reference_models.errors import ModelInputError, ModelRuntimeError

CONTENT_TYPE = "application/zip"
ASPECT_RATIOS: dict[str, tuple[int, int] | None] = {
    "original": None,
    "9:16": (9, 16),
    "1:1": (1, 1),
    "16:9": (16, 9),
    "4:5": (4, 5),
}
MAX_SOURCE_DURATION_S = 600.0
MIN_CLIP_S = 0.5
MAX_CLIP_S = 180.0
MAX_CLIPS = 20
MIN_SIDE = 128
MAX_SIDE = 1920
MIN_THRESHOLD = 5.0
MAX_THRESHOLD = 100.0
MOTION_WEIGHT = 0.7
LENGTH_WEIGHT = 0.3
SCORE_FORMULA = "0.7 * motion + 0.3 * duration_s / max_duration_s"
FFMPEG_TIMEOUT_S = 300.0

#: scenes as frame ranges [start, end)
Scenes = list[tuple[int, int]]


@dataclass(frozen=True)
class ClipOptions:
    min_duration_s: float = 2.0
    max_duration_s: float = 15.0
    aspect_ratio: str = "9:16"
    max_clips: int = 5
    max_side: int = 1080
    threshold: float = 27.0


@dataclass(frozen=True)
class Clip:
    """A piece of the source, in frames [start, end) and seconds."""

    start_frame: int
    end_frame: int
    start_s: float
    end_s: float
    motion: float  # mean content_val (raw, before normalising)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True)
class RankedClip:
    file: str
    rank: int
    start_s: float
    end_s: float
    duration_s: float
    score: float
    motion: float


def _integer(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ModelInputError(f"{name} must be an integer between {low} and {high}")
    return value


def _number(name: str, value: object, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ModelInputError(f"{name} must be a number")
    if not low <= float(value) <= high:
        raise ModelInputError(f"{name} must be between {low:g} and {high:g}")
    return float(value)


def check_options(request: dict[str, Any]) -> ClipOptions:
    defaults = ClipOptions()
    min_s = _number("min_duration_s", request.get("min_duration_s", defaults.min_duration_s),
                    MIN_CLIP_S, MAX_CLIP_S)  # fmt: skip
    max_s = _number("max_duration_s", request.get("max_duration_s", defaults.max_duration_s),
                    MIN_CLIP_S, MAX_CLIP_S)  # fmt: skip
    if max_s < min_s:
        raise ModelInputError("max_duration_s must be at least min_duration_s")
    aspect = request.get("aspect_ratio", defaults.aspect_ratio)
    if aspect not in ASPECT_RATIOS:
        raise ModelInputError(f"aspect_ratio must be one of {', '.join(ASPECT_RATIOS)}")
    max_clips = _integer("max_clips", request.get("max_clips", defaults.max_clips), 1, MAX_CLIPS)
    max_side = _integer("max_side", request.get("max_side", defaults.max_side), MIN_SIDE, MAX_SIDE)
    threshold = _number("threshold", request.get("threshold", defaults.threshold),
                        MIN_THRESHOLD, MAX_THRESHOLD)  # fmt: skip
    return ClipOptions(min_s, max_s, str(aspect), max_clips, max_side, threshold)


# --- pure decisions ----------------------------------------------------------------------------


def split_scenes(
    scenes: Scenes,
    fps: float,
    frame_scores: list[float],
    options: ClipOptions,
) -> list[Clip]:
    """Scenes (frame ranges) to clips within the duration bounds, each with its motion."""
    clips: list[Clip] = []
    piece = max(1, round(options.max_duration_s * fps))
    for start, end in scenes:
        cursor = start
        while cursor < end:
            stop = min(end, cursor + piece)
            if (stop - cursor) / fps + 1e-6 >= options.min_duration_s:
                # the first frame of a scene carries the cut's score: leave it out
                inner = frame_scores[cursor + 1 : stop] if stop - cursor > 1 else []
                motion = sum(inner) / len(inner) if inner else 0.0
                clips.append(Clip(cursor, stop, cursor / fps, stop / fps, motion))
            cursor = stop
    return clips


def rank_clips(clips: list[Clip], options: ClipOptions) -> list[tuple[Clip, float, float]]:
    """(clip, score, normalised motion), best first, at most ``max_clips``."""
    top_motion = max((c.motion for c in clips), default=0.0)
    rated = []
    for clip in clips:
        motion = clip.motion / top_motion if top_motion > 0 else 0.0
        length = min(clip.duration_s / options.max_duration_s, 1.0)
        score = MOTION_WEIGHT * motion + LENGTH_WEIGHT * length
        rated.append((clip, round(score, 4), round(motion, 4)))
    rated.sort(key=lambda item: (-item[1], item[0].start_frame))
    return rated[: options.max_clips]


def crop_filter(width: int, height: int, aspect: str, max_side: int) -> str:
    """The ffmpeg video filter: centre crop to ``aspect``, then fit in ``max_side``; even sides."""
    ratio = ASPECT_RATIOS[aspect]
    crop_w, crop_h = width, height
    if ratio is not None:
        target = ratio[0] / ratio[1]
        if width / height > target:
            crop_w = round(height * target)
        else:
            crop_h = round(width / target)
    crop_w, crop_h = max(2, crop_w - crop_w % 2), max(2, crop_h - crop_h % 2)
    scale = min(1.0, max_side / max(crop_w, crop_h))
    out_w = max(2, int(crop_w * scale) // 2 * 2)
    out_h = max(2, int(crop_h * scale) // 2 * 2)
    x = (width - crop_w) // 2
    y = (height - crop_h) // 2
    return f"crop={crop_w}:{crop_h}:{x}:{y},scale={out_w}:{out_h}:flags=lanczos,setsar=1"


# --- running it --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceFacts:
    duration_s: float
    width: int
    height: int
    fps: float
    frames: int


def detect_scenes(path: Path, threshold: float) -> tuple[SourceFacts, Scenes, list[float]]:
    """The source's facts, its scenes as frame ranges, and each frame's content_val."""
    from scenedetect import ContentDetector, SceneManager, StatsManager, open_video

    try:
        video = open_video(str(path), backend="opencv")
    except Exception as exc:
        raise ModelInputError("the input is not a readable video") from exc
    fps = float(video.frame_rate)
    width, height = video.frame_size
    duration = float(video.duration.seconds) if video.duration is not None else 0.0
    if fps <= 0 or width <= 0 or height <= 0:
        raise ModelInputError("the input is not a readable video")
    if duration > MAX_SOURCE_DURATION_S:
        raise ModelInputError(f"the video is longer than {MAX_SOURCE_DURATION_S:g} s")
    stats = StatsManager()
    manager = SceneManager(stats)
    # a cut needs half a second of scene before it
    manager.add_detector(ContentDetector(threshold=threshold, min_scene_len=max(1, round(fps / 2))))
    frames = manager.detect_scenes(video)
    if frames <= 0:
        raise ModelInputError("the video has no frames")
    scenes = [(s.frame_num, e.frame_num) for s, e in manager.get_scene_list(start_in_scene=True)]
    scores = []
    for index in range(frames):
        value = stats.get_metrics(index, [ContentDetector.FRAME_SCORE_KEY])[0]
        scores.append(float(value) if value is not None else 0.0)
    facts = SourceFacts(round(frames / fps, 3), width, height, fps, frames)
    return facts, scenes, scores


def _has_audio(path: Path) -> bool:
    probe = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    return b"Audio:" in probe.stderr


def cut_clip(source: Path, target: Path, clip: Clip, video_filter: str, audio: bool) -> None:
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin",
        "-ss", f"{clip.start_s:.3f}", "-i", str(source), "-t", f"{clip.duration_s:.3f}",
        "-map", "0:v:0", *(["-map", "0:a:0", "-c:a", "aac", "-b:a", "128k"] if audio else ["-an"]),
        "-vf", video_filter, "-c:v", "libx264", "-preset", "veryfast", "-crf", "23",
        "-pix_fmt", "yuv420p", "-movflags", "+faststart", "-threads", "2", "-y", str(target),
    ]  # fmt: skip
    try:
        done = subprocess.run(
            command, capture_output=True, timeout=FFMPEG_TIMEOUT_S, check=False, env={**os.environ}
        )
    except subprocess.TimeoutExpired as exc:
        raise ModelRuntimeError("ffmpeg took too long to cut a clip") from exc
    if done.returncode != 0 or not target.exists():
        tail = done.stderr.decode("utf-8", "replace")[-300:]
        raise ModelRuntimeError(f"ffmpeg failed to cut a clip (exit {done.returncode}): {tail}")


def auto_clip(video: bytes, request: dict[str, Any]) -> bytes:
    """A ZIP of the best clips of ``video`` and their manifest."""
    if not isinstance(video, bytes | bytearray) or not video:
        raise ModelInputError("the input video is empty")
    options = check_options(request)
    with tempfile.TemporaryDirectory(prefix="kiln-autoclip-") as tmp:
        source = Path(tmp) / "source"
        source.write_bytes(video)
        facts, scenes, scores = detect_scenes(source, options.threshold)
        clips = split_scenes(scenes, facts.fps, scores, options)
        if not clips:
            raise ModelInputError(
                f"no scene of the video lasts min_duration_s ({options.min_duration_s:g} s)"
            )
        ranked = rank_clips(clips, options)
        video_filter = crop_filter(
            facts.width, facts.height, options.aspect_ratio, options.max_side
        )
        audio = _has_audio(source)
        archive = io.BytesIO()
        manifest: list[RankedClip] = []
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as bundle:
            for rank, (clip, score, motion) in enumerate(ranked, start=1):
                name = f"clip-{rank:02d}.mp4"
                target = Path(tmp) / name
                cut_clip(source, target, clip, video_filter, audio)
                bundle.write(target, name)
                manifest.append(
                    RankedClip(
                        file=name,
                        rank=rank,
                        start_s=round(clip.start_s, 3),
                        end_s=round(clip.end_s, 3),
                        duration_s=round(clip.duration_s, 3),
                        score=score,
                        motion=motion,
                    )
                )
            bundle.writestr(
                "manifest.json",
                json.dumps(
                    {
                        "source": asdict(facts),
                        "scenes": len(scenes),
                        "aspect_ratio": options.aspect_ratio,
                        "score": SCORE_FORMULA,
                        "clips": [asdict(item) for item in manifest],
                    },
                    indent=2,
                ),
            )
        return archive.getvalue()
