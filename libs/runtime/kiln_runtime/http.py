"""Every service's HTTP server: uvicorn (uvloop, httptools) serving the service's FastAPI app,
which always includes /healthz, /readyz and /metrics (health.py). The gateway's app adds the
public API; the other services' apps hold only those three routes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import uvicorn
from fastapi import FastAPI

from kiln_runtime.health import health_router
from kiln_runtime.logs import configure_logging
from kiln_runtime.service import ServiceRuntime
from kiln_runtime.settings import ServiceSettings


def serve(app: FastAPI, settings: ServiceSettings) -> None:
    configure_logging(settings.service_name, settings.log_level)
    uvicorn.run(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_level=settings.log_level.lower(),
        proxy_headers=False,
        timeout_keep_alive=settings.http_keep_alive_s,
        loop="uvloop",
        http="httptools",
        # One log line per request costs more CPU than the request itself at load; the
        # gateway's metrics count requests per route instead.
        access_log=False,
    )


def service_app(
    title: str,
    runtime: ServiceRuntime,
    *,
    alongside: Callable[[ServiceRuntime], contextlib.AbstractAsyncContextManager[None]]
    | None = None,
    on_started: Callable[[ServiceRuntime], Awaitable[None]] | None = None,
) -> FastAPI:
    """The app of a service without a public API: the runtime starts with the server, then
    `alongside` (the service's own loops) runs inside it until the server stops."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            if on_started is not None:
                await on_started(runtime)
            if alongside is None:
                yield
            else:
                async with alongside(runtime):
                    yield
        finally:
            await runtime.stop()

    app = FastAPI(title=title, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.include_router(health_router(lambda: runtime.readiness))
    return app
