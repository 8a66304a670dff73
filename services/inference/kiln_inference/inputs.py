"""Input files (images, and videos for auto-clip): fetched by the worker through the URL guard,
with a size cap and a timeout, then screened.

The URL is checked and resolved once (kiln_runtime.url_guard); the connection goes to the
checked address (pinned; the URL's host travels in the Host header and as the TLS server name),
redirects are not followed, proxies from the environment are ignored, and the body is read in
chunks and refused as soon as it passes the cap. What arrives must be a picture Pillow can read
(or a video OpenCV can read, no longer than the duration cap).

A picture that shows a person (kiln_inference.person_check) or sexual content
(kiln_inference.nudity_check) is refused too, in a thread: Kiln does not put a real person into
generated media and does not generate sexual content. A video is screened on frames taken every
``VIDEO_SCREEN_INTERVAL_S`` seconds (at least ``VIDEO_SCREEN_MIN_FRAMES``, at most
``VIDEO_SCREEN_MAX_FRAMES``).

Failures are InputFileError with a machine code, ``INPUT_IMAGE_*`` for pictures and
``INPUT_VIDEO_*`` for videos: ``…_REFUSED`` (the guard said no, or the screen found a person or
sexual content), ``…_TOO_LARGE``, ``…_INVALID`` (unreadable, HTTP 4xx) — never worth retrying —
and ``…_UNAVAILABLE`` (timeout, connection failure, HTTP 5xx), which is.
"""

from __future__ import annotations

import asyncio
import io
import math
import tempfile
from dataclasses import dataclass
from typing import Literal

import cv2
import httpx
from PIL import Image, UnidentifiedImageError

from kiln_inference import nudity_check, person_check
from kiln_inference.metrics import PERSON_CHECK_LATENCY, PERSON_REFUSED
from kiln_runtime.url_guard import Resolver, UnsafeUrl, resolve_public_addresses

USER_AGENT = "Kiln-Inference/1 (+input file fetch)"
PERSON_REFUSED_MESSAGE = (
    "The input image shows a person; Kiln does not put real people into generated media."
)
SEXUAL_REFUSED_MESSAGE = (
    "The input image shows sexual content; Kiln does not generate sexual content."
)
VIDEO_PERSON_REFUSED_MESSAGE = (
    "The input video shows a person; Kiln does not put real people into generated media."
)
VIDEO_SEXUAL_REFUSED_MESSAGE = (
    "The input video shows sexual content; Kiln does not generate sexual content."
)
VIDEO_SCREEN_INTERVAL_S = 2.5
VIDEO_SCREEN_MIN_FRAMES = 6
VIDEO_SCREEN_MAX_FRAMES = 24

FileKind = Literal["image", "video"]


class InputFileError(Exception):
    def __init__(self, code: str, message: str, *, retryable: bool) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable


# the name it had when inputs were only images
InputImageError = InputFileError


def _code(kind: FileKind, what: str) -> str:
    return f"INPUT_{kind.upper()}_{what}"


def _refused(message: str, kind: FileKind = "image") -> InputFileError:
    return InputFileError(_code(kind, "REFUSED"), message, retryable=False)


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    timeout_s: float = 15.0
    video_max_bytes: int = 50 * 1024 * 1024
    video_max_duration_s: float = 300.0
    video_timeout_s: float = 60.0


async def fetch_input_image(
    url: object,
    limits: FetchLimits,
    *,
    allow_loopback: bool,
    resolver: Resolver | None = None,
) -> bytes:
    """The bytes of the picture at ``url``; raises InputFileError."""
    data = await _fetch(url, "image", limits, allow_loopback=allow_loopback, resolver=resolver)
    check_image(data, limits.max_pixels)
    await refuse_a_person(data)
    return data


async def fetch_input_video(
    url: object,
    limits: FetchLimits,
    *,
    allow_loopback: bool,
    resolver: Resolver | None = None,
) -> bytes:
    """The bytes of the video at ``url``, checked and screened; raises InputFileError."""
    data = await _fetch(url, "video", limits, allow_loopback=allow_loopback, resolver=resolver)
    with PERSON_CHECK_LATENCY.time():
        refusal = await asyncio.to_thread(screen_video, data, limits.video_max_duration_s)
    if refusal is not None:
        raise refusal
    return data


async def fetch_input_file(
    url: object,
    kind: FileKind,
    limits: FetchLimits,
    *,
    allow_loopback: bool,
    resolver: Resolver | None = None,
) -> bytes:
    if kind == "video":
        return await fetch_input_video(
            url, limits, allow_loopback=allow_loopback, resolver=resolver
        )
    return await fetch_input_image(url, limits, allow_loopback=allow_loopback, resolver=resolver)


async def _fetch(
    url: object,
    kind: FileKind,
    limits: FetchLimits,
    *,
    allow_loopback: bool,
    resolver: Resolver | None,
) -> bytes:
    if not isinstance(url, str) or not url:
        raise InputFileError(_code(kind, "INVALID"), f"{kind}_url must be a URL", retryable=False)
    timeout_s = limits.timeout_s if kind == "image" else limits.video_timeout_s
    max_bytes = limits.max_bytes if kind == "image" else limits.video_max_bytes
    try:
        async with asyncio.timeout(timeout_s):
            try:
                _target, addresses = await resolve_public_addresses(
                    url, allow_loopback=allow_loopback, resolver=resolver
                )
            except UnsafeUrl as exc:
                raise _refused(f"{kind}_url refused: {exc}", kind) from None
            return await _download(url, addresses[0], max_bytes, kind)
    except TimeoutError:
        raise InputFileError(
            _code(kind, "UNAVAILABLE"),
            f"the input {kind} did not arrive within {timeout_s:g} s",
            retryable=True,
        ) from None


def screen_picture(data: bytes) -> tuple[str, str] | None:
    """(what was found, the refusal's message) when the (already checked) picture shows a
    person or sexual content; None when it may be used."""
    with Image.open(io.BytesIO(data)) as image:
        if image.format == "JPEG":
            image.draft("RGB", (person_check.MAX_SIDE, person_check.MAX_SIDE))
        image.load()
        return screen_image(image)


def screen_image(image: Image.Image, video: bool = False) -> tuple[str, str] | None:
    people = person_check.person_findings(image)
    if people:
        return people[0].kind, VIDEO_PERSON_REFUSED_MESSAGE if video else PERSON_REFUSED_MESSAGE
    sexual = nudity_check.sexual_findings_in_image(image)
    if sexual:
        return "sexual", VIDEO_SEXUAL_REFUSED_MESSAGE if video else SEXUAL_REFUSED_MESSAGE
    return None


async def refuse_a_person(data: bytes) -> None:
    """Raise INPUT_IMAGE_REFUSED when the (already checked) picture shows a person or sexual
    content."""
    with PERSON_CHECK_LATENCY.time():
        found = await asyncio.to_thread(screen_picture, data)
    if found is not None:
        PERSON_REFUSED.labels(found[0]).inc()
        raise InputFileError("INPUT_IMAGE_REFUSED", found[1], retryable=False)


def screen_times(duration_s: float) -> list[float]:
    """When to look at a video of ``duration_s`` seconds: evenly spread, one frame per
    VIDEO_SCREEN_INTERVAL_S, within the frame-count bounds, never at the very end."""
    count = math.ceil(duration_s / VIDEO_SCREEN_INTERVAL_S)
    count = max(VIDEO_SCREEN_MIN_FRAMES, min(VIDEO_SCREEN_MAX_FRAMES, count))
    return [duration_s * (index + 0.5) / count for index in range(count)]


def screen_video(data: bytes, max_duration_s: float) -> InputFileError | None:
    """Check that ``data`` is a readable video within the duration cap and that none of its
    sampled frames shows a person or sexual content; the refusal, or None."""
    with tempfile.NamedTemporaryFile(prefix="kiln-input-", suffix=".video") as handle:
        handle.write(data)
        handle.flush()
        capture = cv2.VideoCapture(handle.name)
        try:
            if not capture.isOpened():
                return InputFileError(
                    "INPUT_VIDEO_INVALID", "the input is not a readable video", retryable=False
                )
            fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
            frames = float(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0.0)
            if fps <= 0 or frames <= 0:
                return InputFileError(
                    "INPUT_VIDEO_INVALID", "the input is not a readable video", retryable=False
                )
            duration_s = frames / fps
            if duration_s > max_duration_s:
                return InputFileError(
                    "INPUT_VIDEO_TOO_LARGE",
                    f"the input video is longer than {max_duration_s:g} s",
                    retryable=False,
                )
            seen = 0
            for at in screen_times(duration_s):
                capture.set(cv2.CAP_PROP_POS_MSEC, at * 1000.0)
                ok, frame = capture.read()
                if not ok or frame is None:
                    continue
                seen += 1
                found = screen_image(Image.fromarray(frame[:, :, ::-1]), video=True)
                if found is not None:
                    PERSON_REFUSED.labels(found[0]).inc()
                    return InputFileError("INPUT_VIDEO_REFUSED", found[1], retryable=False)
            if seen == 0:
                return InputFileError(
                    "INPUT_VIDEO_INVALID", "no frame of the input video could be read",
                    retryable=False,
                )  # fmt: skip
        finally:
            capture.release()
    return None


async def _download(url: str, address: str, max_bytes: int, kind: FileKind = "image") -> bytes:
    original = httpx.URL(url)
    host = original.raw_host.decode("ascii")
    extensions = {"sni_hostname": host} if original.scheme == "https" else {}
    async with httpx.AsyncClient(
        follow_redirects=False, trust_env=False, timeout=httpx.Timeout(None)
    ) as client:
        request = client.build_request(
            "GET",
            original.copy_with(host=address),
            headers={
                "Host": original.netloc.decode("ascii"),
                "User-Agent": USER_AGENT,
                "Accept": f"{kind}/*",
            },
            extensions=extensions,
        )
        try:
            response = await client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise InputFileError(
                _code(kind, "UNAVAILABLE"),
                f"the input {kind} could not be fetched ({type(exc).__name__})",
                retryable=True,
            ) from None
        try:
            if 300 <= response.status_code < 400:
                raise _refused(f"{kind}_url redirects; redirects are not followed", kind)
            if response.status_code >= 500 or response.status_code == 429:
                raise InputFileError(
                    _code(kind, "UNAVAILABLE"),
                    f"the {kind} server answered HTTP {response.status_code}",
                    retryable=True,
                )
            if response.status_code != 200:
                raise InputFileError(
                    _code(kind, "INVALID"),
                    f"the {kind} server answered HTTP {response.status_code}",
                    retryable=False,
                )
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                raise _too_large(max_bytes, kind)
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise _too_large(max_bytes, kind)
            return bytes(body)
        finally:
            await response.aclose()


def _too_large(max_bytes: int, kind: FileKind = "image") -> InputFileError:
    return InputFileError(
        _code(kind, "TOO_LARGE"),
        f"the input {kind} is larger than {max_bytes // (1024 * 1024)} MB",
        retryable=False,
    )


def check_image(data: bytes, max_pixels: int) -> None:
    """Refuse what is not a picture (or too many pixels) before it goes to Triton."""
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
            if width * height > max_pixels:
                raise InputImageError(
                    "INPUT_IMAGE_TOO_LARGE",
                    f"the input image has more than {max_pixels} pixels",
                    retryable=False,
                )
            probe.verify()
    except InputImageError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise InputImageError(
            "INPUT_IMAGE_INVALID", "the input is not a readable image", retryable=False
        ) from None
