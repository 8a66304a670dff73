"""The gateway: `python -m kiln_gateway` serves the public API v1 and keeps the read model."""

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import APIRouter, FastAPI, Request, Response

from kiln_contracts import Event
from kiln_gateway import (
    admin,
    catalog,
    files,
    jobs,
    keys,
    sessions,
    usage,
    webhook_endpoints,
)
from kiln_gateway.config import GatewaySettings
from kiln_gateway.consumers import HANDLERS
from kiln_gateway.errors import error_response, install_error_handlers
from kiln_gateway.hostile_input import install_input_guards
from kiln_gateway.http_metrics import HttpMetrics
from kiln_gateway.models import MESSAGING, Base
from kiln_gateway.openapi import install_openapi_document
from kiln_gateway.ratelimits import RateLimitHeaders
from kiln_gateway.state import GatewayState
from kiln_runtime.blobs import blob_store_for
from kiln_runtime.catalog import load_catalog
from kiln_runtime.health import health_router
from kiln_runtime.http import serve
from kiln_runtime.service import ServiceRuntime


def create_app(settings: GatewaySettings) -> FastAPI:
    runtime = ServiceRuntime(settings, Base.metadata, MESSAGING)
    state = GatewayState(
        settings=settings,
        runtime=runtime,
        catalog=load_catalog(settings.catalog_file),
        blobs=blob_store_for(settings),
    )

    def wake_waiters(event: Event) -> None:
        state.waiters.notify(event.job_id)
        grant_id = getattr(event.message, "grant_id", "")
        if grant_id:
            state.waiters.notify(grant_id)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            async with runtime.consuming(HANDLERS, on_commit=wake_waiters):
                yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title="Kiln API",
        version="1",
        description="Asynchronous generative-media jobs: submit, wait, download, decrypt.",
        lifespan=lifespan,
    )
    app.state.gateway = state
    install_error_handlers(app)
    # Body size (streamed), JSON-only bodies, bad UTF-8/NUL/depth; the completed OpenAPI.
    install_input_guards(app, settings)
    install_openapi_document(app)
    # X-RateLimit-* and Retry-After on every response of a rate-limited request.
    app.add_middleware(RateLimitHeaders)

    @app.middleware("http")
    async def request_id_and_size(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        request.state.request_id = f"req_{uuid.uuid4().hex}"
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > settings.max_body_bytes):
            return error_response(
                request, 413, "PAYLOAD_TOO_LARGE", "The request body is too large."
            )
        response = await call_next(request)
        response.headers["X-Request-Id"] = request.state.request_id
        return response

    api = APIRouter(prefix="/api/v1")
    for module in (admin, jobs, catalog, usage, files, webhook_endpoints, sessions, keys):
        api.include_router(module.router)
    app.include_router(api)
    app.include_router(health_router(lambda: runtime.readiness))
    app.add_middleware(HttpMetrics)  # outermost: RED metrics of every answer, per route template
    return app


def main() -> None:
    settings = GatewaySettings()
    serve(create_app(settings), settings)
