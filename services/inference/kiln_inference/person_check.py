"""Does an input image show a person? Kiln does not put a real person's face or body into
generated media, and the models that take an input image keep its structure, so a picture of a
person is refused before it reaches Triton (docs/content-policy.md).

The detector is OpenCV's Haar cascades (opencv-python-headless, on the CPU, offline): two
frontal-face cascades, the profile-face cascade (also on the mirror image, for faces turned the
other way), upper body and full body. The picture is taken as the models take it (stored
pixels, alpha dropped; when EXIF says it is turned, the upright view is looked at too), made
grey, shrunk so that its longer side is at most ``MAX_SIDE`` pixels, and histogram-equalised.
Each cascade reports boxes with a *neighbour count*: how many overlapping windows at nearby
positions and scales agreed. Texture (coins, gravel, cells, the moon, Kiln's own abstract
renders) makes a few windows fire; a real face makes dozens. The thresholds were chosen on
scikit-image's sample photos and 144 of Kiln's procedural renders
(tests/unit/inference/test_inference_person_check.py):

- frontal face: a ``frontalface_alt2`` box with at least ``FRONTAL_MIN_NEIGHBOURS`` (10)
  that a ``frontalface_default`` box with at least 4 overlaps (IoU >= 0.3). Measured: the
  astronaut photo 36; her face pasted 80 px wide into the coffee photo 16; the worst
  non-person, a render, 7.
- profile face: at least ``PROFILE_MIN_NEIGHBOURS`` (10) both in the equalised picture and in
  the picture as it is (overlapping boxes; the smaller count). The cameraman photo: 14 and 25;
  the worst render: 14 equalised but 6 as it is.
- upper body (12) and full body (10), confirmed the same way. These cascades fire often on
  texture (coins: 7, the moon: 9, a render: 9), so they catch only a large, clear figure.

Faces smaller than 1/20 of the shorter side and bodies smaller than 1/8 (after shrinking) are
not looked for; in practice a face needs to be about 1/6 of the shorter side to be found. A
detector misses people (small, occluded, rotated, drawn, in unusual light) and can, rarely,
see one where there is none: it is a guard, not a proof.

Pure: no I/O, no asyncio. The worker calls it in a thread (asyncio.to_thread).
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps

MAX_SIDE = 640
SCALE_FACTOR = 1.1
FRONTAL_MIN_NEIGHBOURS = 10
FRONTAL_CONFIRM_MIN_NEIGHBOURS = 4
PROFILE_MIN_NEIGHBOURS = 10
UPPER_BODY_MIN_NEIGHBOURS = 12
FULL_BODY_MIN_NEIGHBOURS = 10
CONFIRM_MIN_IOU = 0.3
FACE_MIN_FRACTION = 1 / 20
BODY_MIN_FRACTION = 1 / 8
MIN_WINDOW = 20
ORIENTATION_TAG = 0x0112

_CASCADES = {
    "frontal_alt2": "haarcascade_frontalface_alt2.xml",
    "frontal_default": "haarcascade_frontalface_default.xml",
    "profile": "haarcascade_profileface.xml",
    "upper_body": "haarcascade_upperbody.xml",
    "full_body": "haarcascade_fullbody.xml",
}

Box = tuple[int, int, int, int]  # x, y, width, height in the shrunk picture
Grey = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class Finding:
    kind: str  # "frontal_face", "profile_face", "upper_body", "full_body"
    box: Box
    neighbours: int


# A CascadeClassifier is not promised to be safe across threads: one set per thread, loaded
# on first use (about 50 ms) and kept for the thread's life.
_local = threading.local()


def _cascades() -> dict[str, cv2.CascadeClassifier]:
    loaded: dict[str, cv2.CascadeClassifier] | None = getattr(_local, "cascades", None)
    if loaded is None:
        loaded = {}
        for name, filename in _CASCADES.items():
            classifier = cv2.CascadeClassifier(cv2.data.haarcascades + filename)  # type: ignore[attr-defined]
            if classifier.empty():
                raise RuntimeError(f"OpenCV cascade {filename} did not load")
            loaded[name] = classifier
        _local.cascades = loaded
    return loaded


def _grey(image: Image.Image) -> Grey:
    """The picture as the models see it (alpha dropped, like convert("RGB")), grey, and at
    most MAX_SIDE pixels on its longer side."""
    grey = image.convert("RGB").convert("L") if image.mode in ("P", "PA") else image.convert("L")
    scale = MAX_SIDE / max(grey.size)
    if scale < 1:
        size = (max(1, round(grey.width * scale)), max(1, round(grey.height * scale)))
        grey = grey.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(grey, dtype=np.uint8)


def _detect(
    classifier: cv2.CascadeClassifier, grey: Grey, min_side: int, min_neighbours: int
) -> list[tuple[Box, int]]:
    if min(grey.shape) < min_side:
        return []
    boxes, neighbours = classifier.detectMultiScale2(
        grey,
        scaleFactor=SCALE_FACTOR,
        # OpenCV keeps a group of windows when it has more than minNeighbors members
        minNeighbors=min_neighbours - 1,
        minSize=(min_side, min_side),
    )
    return [
        ((int(x), int(y), int(w), int(h)), int(n))
        for (x, y, w, h), n in zip(boxes, neighbours, strict=True)
        if int(n) >= min_neighbours
    ]


def _flip(grey: Grey) -> Grey:
    return np.ascontiguousarray(grey[:, ::-1])


def _iou(a: Box, b: Box) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = min(ax + aw, bx + bw) - max(ax, bx)
    h = min(ay + ah, by + bh) - max(ay, by)
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / (aw * ah + bw * bh - inter)


def _confirmed(
    classifier: cv2.CascadeClassifier,
    equalised: Grey,
    raw: Grey,
    min_side: int,
    min_neighbours: int,
) -> list[tuple[Box, int]]:
    """Boxes found with enough neighbours in the equalised picture *and* (overlapping) in the
    picture as it is; the count is the smaller of the two. The second look runs only when the
    first found something, so an ordinary picture pays for one."""
    first = _detect(classifier, equalised, min_side, min_neighbours)
    if not first:
        return []
    second = _detect(classifier, raw, min_side, min_neighbours)
    return [
        (box, min(n, m))
        for box, n in first
        for other, m in second
        if _iou(box, other) >= CONFIRM_MIN_IOU
    ]


def person_findings(image: Image.Image) -> list[Finding]:
    """What in ``image`` looks like a person (empty: nothing found). The pixels as stored (what
    the models use) and, when EXIF says the picture is turned, the upright view as well."""
    findings = _findings_in(_grey(image))
    if not findings and image.getexif().get(ORIENTATION_TAG, 1) != 1:
        upright = ImageOps.exif_transpose(image)
        if upright is not None:
            findings = _findings_in(_grey(upright))
    return findings


def _findings_in(raw: Grey) -> list[Finding]:
    equalised: Grey = np.asarray(cv2.equalizeHist(raw), dtype=np.uint8)
    short = min(raw.shape)
    face_min = max(MIN_WINDOW, int(short * FACE_MIN_FRACTION))
    body_min = max(MIN_WINDOW, int(short * BODY_MIN_FRACTION))
    cascades = _cascades()
    findings: list[Finding] = []

    alt2 = _detect(cascades["frontal_alt2"], equalised, face_min, FRONTAL_MIN_NEIGHBOURS)
    if alt2:
        default = _detect(
            cascades["frontal_default"], equalised, face_min, FRONTAL_CONFIRM_MIN_NEIGHBOURS
        )
        for box, n in alt2:
            if any(_iou(box, other) >= CONFIRM_MIN_IOU for other, _ in default):
                findings.append(Finding("frontal_face", box, n))
    if findings:
        return findings

    width = raw.shape[1]
    for flipped in (False, True):
        eq_view, raw_view = (_flip(equalised), _flip(raw)) if flipped else (equalised, raw)
        for (x, y, w, h), n in _confirmed(
            cascades["profile"], eq_view, raw_view, face_min, PROFILE_MIN_NEIGHBOURS
        ):
            box = (width - x - w, y, w, h) if flipped else (x, y, w, h)
            findings.append(Finding("profile_face", box, n))
        if findings:
            return findings

    for kind, threshold in (
        ("upper_body", UPPER_BODY_MIN_NEIGHBOURS),
        ("full_body", FULL_BODY_MIN_NEIGHBOURS),
    ):
        for box, n in _confirmed(cascades[kind], equalised, raw, body_min, threshold):
            findings.append(Finding(kind, box, n))
    return findings


def shows_a_person(image: Image.Image) -> bool:
    return bool(person_findings(image))


def person_findings_in(data: bytes) -> list[Finding]:
    """Decode ``data`` (already checked to be a readable picture) and look for a person. For
    animated formats, the first frame (the one the models use)."""
    with Image.open(io.BytesIO(data)) as image:
        if image.format == "JPEG":
            # decode at a reduced scale when the picture is much larger than MAX_SIDE
            image.draft("RGB", (MAX_SIDE, MAX_SIDE))
        image.load()
        return person_findings(image)
