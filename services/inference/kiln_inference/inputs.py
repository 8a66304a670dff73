"""Input images: fetched by the worker through the URL guard, with a size cap and a timeout.

The URL is checked and resolved once (kiln_runtime.url_guard); the connection goes to the
checked address (pinned; the URL's host travels in the Host header and as the TLS server name),
redirects are not followed, proxies from the environment are ignored, and the body is read in
chunks and refused as soon as it passes the cap. What arrives must be a picture Pillow can read.

A picture that shows a person (kiln_inference.person_check, in a thread) is refused too: Kiln
does not put a real person into generated media.

Failures are InputImageError with a machine code: ``INPUT_IMAGE_REFUSED`` (the guard said no,
or the picture shows a person),
``INPUT_IMAGE_TOO_LARGE``, ``INPUT_IMAGE_INVALID`` (not an image, HTTP 4xx) — never worth
retrying — and ``INPUT_IMAGE_UNAVAILABLE`` (timeout, connection failure, HTTP 5xx), which is.
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass

import httpx
from PIL import Image, UnidentifiedImageError

from kiln_inference import person_check
from kiln_inference.metrics import PERSON_CHECK_LATENCY, PERSON_REFUSED
from kiln_runtime.url_guard import Resolver, UnsafeUrl, resolve_public_addresses

USER_AGENT = "Kiln-Inference/1 (+input image fetch)"
PERSON_REFUSED_MESSAGE = (
    "The input image shows a person; Kiln does not put real people into generated media."
)


class InputImageError(Exception):
    def __init__(self, code: str, message: str, *, retryable: bool) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable


def _refused(message: str) -> InputImageError:
    return InputImageError("INPUT_IMAGE_REFUSED", message, retryable=False)


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    timeout_s: float = 15.0


async def fetch_input_image(
    url: object,
    limits: FetchLimits,
    *,
    allow_loopback: bool,
    resolver: Resolver | None = None,
) -> bytes:
    """The bytes of the picture at ``url``; raises InputImageError."""
    if not isinstance(url, str) or not url:
        raise InputImageError("INPUT_IMAGE_INVALID", "image_url must be a URL", retryable=False)
    try:
        async with asyncio.timeout(limits.timeout_s):
            try:
                _target, addresses = await resolve_public_addresses(
                    url, allow_loopback=allow_loopback, resolver=resolver
                )
            except UnsafeUrl as exc:
                raise _refused(f"image_url refused: {exc}") from None
            data = await _download(url, addresses[0], limits.max_bytes)
    except TimeoutError:
        raise InputImageError(
            "INPUT_IMAGE_UNAVAILABLE",
            f"the input image did not arrive within {limits.timeout_s:g} s",
            retryable=True,
        ) from None
    check_image(data, limits.max_pixels)
    await refuse_a_person(data)
    return data


async def refuse_a_person(data: bytes) -> None:
    """Raise INPUT_IMAGE_REFUSED when the (already checked) picture shows a person."""
    with PERSON_CHECK_LATENCY.time():
        findings = await asyncio.to_thread(person_check.person_findings_in, data)
    if findings:
        PERSON_REFUSED.labels(findings[0].kind).inc()
        raise InputImageError("INPUT_IMAGE_REFUSED", PERSON_REFUSED_MESSAGE, retryable=False)


async def _download(url: str, address: str, max_bytes: int) -> bytes:
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
                "Accept": "image/*",
            },
            extensions=extensions,
        )
        try:
            response = await client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise InputImageError(
                "INPUT_IMAGE_UNAVAILABLE",
                f"the input image could not be fetched ({type(exc).__name__})",
                retryable=True,
            ) from None
        try:
            if 300 <= response.status_code < 400:
                raise _refused("image_url redirects; redirects are not followed")
            if response.status_code >= 500 or response.status_code == 429:
                raise InputImageError(
                    "INPUT_IMAGE_UNAVAILABLE",
                    f"the image server answered HTTP {response.status_code}",
                    retryable=True,
                )
            if response.status_code != 200:
                raise InputImageError(
                    "INPUT_IMAGE_INVALID",
                    f"the image server answered HTTP {response.status_code}",
                    retryable=False,
                )
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                raise _too_large(max_bytes)
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise _too_large(max_bytes)
            return bytes(body)
        finally:
            await response.aclose()


def _too_large(max_bytes: int) -> InputImageError:
    return InputImageError(
        "INPUT_IMAGE_TOO_LARGE",
        f"the input image is larger than {max_bytes // (1024 * 1024)} MB",
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
