"""The gateway: `python -m kiln_gateway` serves the public API v1 and keeps the read model."""

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator

from fastapi import APIRouter, FastAPI

from kiln_crypto import SecretsKeyring
from kiln_gateway.admin.endpoints import router as admin_router
from kiln_gateway.catalog.endpoints import router as catalog_router
from kiln_gateway.config import GatewaySettings
from kiln_gateway.console.install import install_console
from kiln_gateway.errors import install_error_handlers
from kiln_gateway.files.endpoints import router as files_router
from kiln_gateway.handlers import ReadModel
from kiln_gateway.hostile_input import install_input_guards
from kiln_gateway.http_metrics import HttpMetrics
from kiln_gateway.jobs.endpoints import router as jobs_router
from kiln_gateway.keys.endpoints import auth_router
from kiln_gateway.keys.endpoints import router as keys_router
from kiln_gateway.migrate import upgrade_connection
from kiln_gateway.openapi import install_openapi_document
from kiln_gateway.ratelimit_stores import SharedCounterStore
from kiln_gateway.ratelimits import RateLimitHeaders
from kiln_gateway.request_ids import RequestIds
from kiln_gateway.state import GatewayState
from kiln_gateway.tables import MESSAGING, Base
from kiln_gateway.usage.endpoints import router as usage_router
from kiln_gateway.webhooks.endpoints import router as webhooks_router
from kiln_runtime.blobs import blob_store_for
from kiln_runtime.catalog import load_catalog
from kiln_runtime.health import health_router
from kiln_runtime.http import serve
from kiln_runtime.service import ServiceRuntime

# In the order of the OpenAPI document.
ROUTERS = (
    admin_router,
    jobs_router,
    catalog_router,
    usage_router,
    files_router,
    webhooks_router,
    auth_router,
    keys_router,
)


def create_app(settings: GatewaySettings) -> FastAPI:
    # Raises SecretsKeyError (the process does not start) without a usable KILN_SECRETS_KEYS.
    keyring = SecretsKeyring.from_setting(settings.secrets_keys.get_secret_value())
    read_model = ReadModel()
    runtime = ServiceRuntime(
        settings,
        Base.metadata,
        MESSAGING,
        # The migration that sealed the clear webhook secrets of earlier releases needs it.
        migrate=functools.partial(upgrade_connection, keyring=keyring),
        handlers=read_model.handlers(),
    )
    state = GatewayState(
        settings=settings,
        runtime=runtime,
        catalog=load_catalog(settings.catalog_file),
        blobs=blob_store_for(settings),
        keyring=keyring,
    )
    read_model.notify = state.waiters.notify

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        loops = [asyncio.create_task(state.last_used.run(), name="last-used")]
        store = state.rate_limiter.store
        if isinstance(store, SharedCounterStore):
            loops.append(asyncio.create_task(store.run(), name="rate-limit-sync"))
        try:
            yield
        finally:
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            await state.last_used.close()
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
    # Outermost: every answer, the guards' included, carries the request's id.
    app.add_middleware(RequestIds)

    api = APIRouter(prefix="/api/v1")
    for router in ROUTERS:
        api.include_router(router)
    app.include_router(api)
    # The web console under /console/ (pages, its static files; its errors as pages).
    install_console(app)
    app.include_router(health_router(lambda: runtime.readiness))
    app.add_middleware(HttpMetrics)  # outermost: RED metrics of every answer, per route template
    return app


def main() -> None:
    settings = GatewaySettings()
    serve(create_app(settings), settings)
