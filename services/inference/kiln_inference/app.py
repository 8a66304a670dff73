"""The inference worker: `python -m kiln_inference` (HTTP only for health and metrics)."""

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from kiln_inference.config import InferenceSettings
from kiln_inference.models import MESSAGING, Base
from kiln_inference.triton_client import triton_ready
from kiln_inference.worker import Worker, make_handlers
from kiln_runtime.blobs import blob_store_for
from kiln_runtime.catalog import load_catalog
from kiln_runtime.health import health_router
from kiln_runtime.http import serve
from kiln_runtime.service import ServiceRuntime


def create_app(settings: InferenceSettings) -> FastAPI:
    catalog = load_catalog(settings.catalog_file)
    served = sorted({m.triton_model for m in catalog.models} | {catalog.sandbox_triton_model})

    async def triton() -> bool:
        return await triton_ready(settings.triton_grpc_url, served)

    runtime = ServiceRuntime(settings, Base.metadata, MESSAGING, {"triton": triton})

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        wakeup = asyncio.Event()
        worker = Worker(
            settings,
            runtime.sessions,
            runtime.relay,
            catalog,
            blob_store_for(settings),
            wakeup,
        )
        try:
            async with runtime.consuming(
                make_handlers(wakeup, settings.worker_id), on_commit=worker.on_event_committed
            ):
                task = asyncio.create_task(worker.run(), name="worker")
                try:
                    yield
                finally:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
        finally:
            await runtime.stop()

    app = FastAPI(title="Kiln inference", lifespan=lifespan)
    app.include_router(health_router(lambda: runtime.readiness))
    return app


def main() -> None:
    settings = InferenceSettings()
    serve(create_app(settings), settings)
