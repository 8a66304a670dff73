"""Does an input image show sexual content? Kiln does not generate sexual content, so a picture
showing exposed genitals, breasts, buttocks or anus is refused before it reaches Triton, like a
picture of a person (docs/content-policy.md).

The detector is NudeNet's ``320n.onnx`` (a YOLOv8-nano detector of exposed and covered body
parts, shipped in the ``nudenet`` wheel), run by onnxruntime through nudenet's own pre- and
post-processing, on the CPU, offline. A picture is refused when a box of a class in
``REFUSED_CLASSES`` scores at least ``MIN_SCORE`` and, in a colour picture, at least
``MIN_SKIN_SHARE`` of the box's pixels have a skin tone (a chroma range in YCrCb that covers light
to dark skin). The skin test keeps the detector from refusing abstract colour fields (it scores
scikit-image's colour wheel 0.83 as ``BUTTOCKS_EXPOSED``; 3 % of that box is skin-toned); a
grey picture has no chroma, and its detections count on their score alone.

The decision is a pure function of the detections and the skin mask (``sexual_findings``),
tested on its own; the detector is tested on pictures that must pass (the repository holds no
sexual imagery to test the other way).

Pure: no I/O, no asyncio. The worker calls it in a thread (asyncio.to_thread).
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image

MIN_SCORE = 0.5
MIN_SKIN_SHARE = 0.2
#: a picture whose chroma stays this close to neutral is grey (no skin test possible)
GREY_CHROMA = 4
REFUSED_CLASSES = frozenset(
    {
        "FEMALE_GENITALIA_EXPOSED",
        "MALE_GENITALIA_EXPOSED",
        "FEMALE_BREAST_EXPOSED",
        "BUTTOCKS_EXPOSED",
        "ANUS_EXPOSED",
    }
)
#: nudenet letterboxes to 320 px; a larger picture only costs decoding time
MAX_SIDE = 1280

# One detector for the process: an onnxruntime session may run from several threads at once,
# and nudenet's detect() keeps no other state. Made on first use.
_detector_lock = threading.Lock()
_shared: list[Any] = []


@dataclass(frozen=True)
class SexualFinding:
    label: str
    score: float
    box: tuple[int, int, int, int]


Mask = npt.NDArray[np.bool_]


def skin_mask(rgb: npt.NDArray[np.uint8]) -> Mask | None:
    """Skin-toned pixels of an (H, W, 3) RGB picture; None for a grey picture."""
    ycrcb = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2YCrCb)
    luma, cr, cb = ycrcb[..., 0], ycrcb[..., 1].astype(np.int16), ycrcb[..., 2].astype(np.int16)
    chroma = np.maximum(np.abs(cr - 128), np.abs(cb - 128))
    if float(np.percentile(chroma, 99)) < GREY_CHROMA:
        return None
    mask: Mask = (cr >= 135) & (cr <= 180) & (cb >= 85) & (cb <= 135) & (luma >= 40)
    return mask


def skin_share(mask: Mask, box: tuple[int, int, int, int]) -> float:
    x, y, w, h = box
    piece = mask[max(0, y) : max(0, y + h), max(0, x) : max(0, x + w)]
    return float(piece.mean()) if piece.size else 0.0


def sexual_findings(
    detections: Iterable[Mapping[str, Any]], skin: Mask | None
) -> list[SexualFinding]:
    """The detections that make a picture sexual content, best first. ``skin`` is the
    picture's skin mask (None: a grey picture, where the score alone decides)."""
    found = []
    for d in detections:
        if d.get("class") not in REFUSED_CLASSES or float(d.get("score", 0.0)) < MIN_SCORE:
            continue
        x, y, w, h = (int(v) for v in d["box"])
        if skin is not None and skin_share(skin, (x, y, w, h)) < MIN_SKIN_SHARE:
            continue
        found.append(SexualFinding(str(d["class"]), float(d["score"]), (x, y, w, h)))
    return sorted(found, key=lambda f: -f.score)


def _detector() -> Any:
    if not _shared:
        with _detector_lock:
            if not _shared:
                from nudenet import NudeDetector

                _shared.append(NudeDetector())
    return _shared[0]


def _view(image: Image.Image) -> Image.Image:
    """The picture as the models see it (alpha dropped), at most MAX_SIDE on its longer side."""
    rgb = image.convert("RGB")
    scale = MAX_SIDE / max(rgb.size)
    if scale < 1:
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        rgb = rgb.resize(size, Image.Resampling.BILINEAR)
    return rgb


def detections_in(rgb: Image.Image) -> list[dict[str, Any]]:
    """NudeNet's raw detections ({class, score, box}) on an RGB picture."""
    # nudenet converts an RGBA array to BGR itself (cv2.COLOR_RGBA2BGR)
    pixels = np.ascontiguousarray(np.asarray(rgb.convert("RGBA"), dtype=np.uint8))
    result: list[dict[str, Any]] = _detector().detect(pixels)
    return result


def sexual_findings_in_image(image: Image.Image) -> list[SexualFinding]:
    rgb = _view(image)
    return sexual_findings(detections_in(rgb), skin_mask(np.asarray(rgb, dtype=np.uint8)))


def sexual_findings_in(data: bytes) -> list[SexualFinding]:
    """Decode ``data`` (already checked to be a readable picture) and look for sexual content;
    for animated formats, the first frame."""
    with Image.open(io.BytesIO(data)) as image:
        if image.format == "JPEG":
            image.draft("RGB", (MAX_SIDE, MAX_SIDE))
        image.load()
        return sexual_findings_in_image(image)
