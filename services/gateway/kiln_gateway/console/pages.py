"""Rendering a console page: the Jinja2 templates (autoescaped), the static files' URLs (with a
content hash, so a new release is never served from a stale cache), and the headers every
console answer carries: a Content-Security-Policy that admits only Kiln's own origin (no inline
script or style anywhere: every script is a file), and no caching of pages, which may show a
secret once."""

import hashlib
import json
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from kiln_runtime.money import format_credits

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
STATIC_PREFIX = "/console/static"

# blob: is the browser's own memory (a result decrypted in the page, shown and saved from it).
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob:",
        "media-src 'self' blob:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def secure(response: Response, *, cache: bool = False) -> Response:
    response.headers.update(SECURITY_HEADERS)
    if not cache:
        response.headers["Cache-Control"] = "no-store"
    return response


@cache
def _static_version(name: str) -> str:
    path = STATIC / name
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    except OSError:
        return "missing"


def static_url(name: str) -> str:
    return f"{STATIC_PREFIX}/{name}?v={_static_version(name)}"


def vendor_assets_missing() -> list[str]:
    """The built third-party files (make console-assets) that are not there."""
    wanted = ("htmx.min.js", "uPlot.iife.min.js", "uPlot.min.css")
    return [name for name in wanted if not (STATIC / "vendor" / name).is_file()]


def _when(value: datetime | str | None) -> str:
    """A time as the console shows it (UTC, to the second)."""
    if value is None:
        return "—"
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    else:
        moment = value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _iso(value: datetime | None) -> str:
    if value is None:
        return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _credits(millicredits: int | None) -> str:
    return "—" if millicredits is None else format_credits(millicredits)


def _pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["static"] = static_url
    env.filters["when"] = _when
    env.filters["iso"] = _iso
    env.filters["credits"] = _credits
    env.filters["pretty_json"] = _pretty_json
    return env


ENVIRONMENT = _environment()


def render(
    request: Request, template: str, context: dict[str, Any] | None = None, status: int = 200
) -> HTMLResponse:
    values = {"request": request, "path": request.url.path, **(context or {})}
    html = ENVIRONMENT.get_template(template).render(values)
    return secure(HTMLResponse(html, status_code=status))  # type: ignore[return-value]


class ConsoleStaticFiles(StaticFiles):
    """The console's CSS, scripts and vendored libraries, with the console's headers."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        secure(response, cache=True)
        if response.status_code == 200:
            # The URLs carry a content hash (static_url), so a copy may be kept long.
            response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        return response
