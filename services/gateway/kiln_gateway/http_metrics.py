"""RED metrics of the HTTP API, per route template: requests (by method and status), and a
latency histogram; errors are the requests with a 5xx status.

A pure ASGI middleware (not Starlette's BaseHTTPMiddleware, which buffers streamed bodies such
as the Server-Sent Events of `/jobs/{id}/events`). The route label is the template FastAPI
matched (`/api/v1/jobs/{job_id}`), never the raw path, so that ids do not make new series; a
request that matched no route is counted under `<unmatched>`. Latency is the time until the
response starts (status and headers sent): for a stream that is its time to first byte, for
everything else all but the last write of the body.
"""

import time
from typing import Any

from prometheus_client import Counter, Histogram
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UNMATCHED = "<unmatched>"

HTTP_REQUESTS = Counter(
    "kiln_http_requests_total",
    "HTTP requests answered, by route template, method and status code.",
    ["route", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "kiln_http_request_duration_seconds",
    "Time from a request's arrival to the start of its response, by route template and method.",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 2.5, 3, 5, 10, 30),
)


def route_template(scope: Scope) -> str:
    """The path template of the route that handled the request, every router prefix included.

    FastAPI records the route it chose in the scope while routing. Since FastAPI keeps included
    routers whole (0.16x), the chosen APIRoute's own `path` lacks its routers' prefixes
    (`/{job_id}` for `/api/v1/jobs/{job_id}`); the full template is the `path_format` of the
    effective route context FastAPI keeps under `scope["fastapi"]`. Older FastAPI copied
    included routes with their prefixes, so there the route's own path is the template. A
    request that fell through (404, 405) is counted under the first route that would match its
    path, else `<unmatched>`.
    """
    fastapi_scope: Any = scope.get("fastapi")
    if isinstance(fastapi_scope, dict):
        template = getattr(fastapi_scope.get("effective_route_context"), "path_format", None)
        if isinstance(template, str) and template:
            return template
    route: Any = scope.get("route")
    for attribute in ("path_format", "path"):
        template = getattr(route, attribute, None)
        if isinstance(template, str) and template:
            return template
    app: Any = scope.get("app")
    for candidate in getattr(getattr(app, "router", None), "routes", ()):
        matches = getattr(candidate, "matches", None)
        if matches is not None and matches(scope)[0] != Match.NONE:
            found = getattr(candidate, "path_format", None) or getattr(candidate, "path", None)
            if isinstance(found, str) and found:
                return found
    return UNMATCHED


class HttpMetrics:
    """Count and time every HTTP request; add it last so that it sees every answer, the ones
    other middlewares give (413, 429) included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers when the app raises before it responds
        latency: float | None = None

        async def send_and_time(message: Message) -> None:
            nonlocal status, latency
            if message["type"] == "http.response.start":
                status = int(message["status"])
                latency = time.perf_counter() - started
            await send(message)

        try:
            await self.app(scope, receive, send_and_time)
        finally:
            route = route_template(scope)
            method = str(scope.get("method", ""))
            HTTP_REQUESTS.labels(route, method, str(status)).inc()
            elapsed = latency if latency is not None else time.perf_counter() - started
            HTTP_LATENCY.labels(route, method).observe(elapsed)
