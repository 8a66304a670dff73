"""The inference worker: `python -m kiln_inference` accepts dispatched attempts (handlers.py),
runs them on Triton (worker.py), cancels the ones whose partition moved away
(cancel_watch.py) and serves /healthz, /readyz (Triton's models ready included) and
/metrics."""

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from kiln_contracts import Event
from kiln_inference.cancel_watch import CancelWatch
from kiln_inference.config import InferenceSettings
from kiln_inference.handlers import Inference
from kiln_inference.migrate import upgrade_connection
from kiln_inference.tables import MESSAGING, Base
from kiln_inference.triton_client import close_clients, triton_ready
from kiln_inference.worker import Worker
from kiln_runtime.blobs import blob_store_for
from kiln_runtime.catalog import load_catalog
from kiln_runtime.http import serve, service_app
from kiln_runtime.service import ServiceRuntime

CANCEL_FETCH_WAIT_MS = 1000


def create_app(settings: InferenceSettings) -> FastAPI:
    catalog = load_catalog(settings.catalog_file)
    # Readiness covers the models of Kiln's own model host. A model on an operator's server
    # does not hold the worker back: while that server is away its jobs fail as retryable
    # TRITON_UNAVAILABLE and the scheduler tries them again.
    served = sorted(
        {m.triton_model for m in catalog.models if m.triton_server is None}
        | {catalog.sandbox_triton_model}
    )

    async def triton() -> bool:
        return await triton_ready(settings.triton_grpc_url, served)

    inference = Inference(settings.worker_id)
    runtime = ServiceRuntime(
        settings,
        Base.metadata,
        MESSAGING,
        migrate=upgrade_connection,
        handlers=inference.handlers(),
        extra_checks={"triton": triton},
    )

    @contextlib.asynccontextmanager
    async def working(rt: ServiceRuntime) -> AsyncIterator[None]:
        worker = Worker(settings, rt, catalog, blob_store_for(settings))
        inference.runner = worker

        async def cancel(event: Event) -> None:
            await rt.write(lambda unit: inference.handle_cancel_requested(unit, event))

        watch = CancelWatch(
            settings.kafka_bootstrap,
            worker.holds,
            cancel,
            held_since=worker.held_since,
            # A fetch returns as soon as a cancel arrives; the wait only spaces idle fetches
            # (at 200 ms, Kafka spent about 2.5 % of a core answering one idle reader).
            poll_timeout_ms=CANCEL_FETCH_WAIT_MS,
        )

        async def watch_cancels() -> None:
            await worker.loaded.wait()  # so that it reads back to the jobs an earlier life left
            await watch.run()

        tasks = [
            asyncio.create_task(worker.run(), name="worker"),
            asyncio.create_task(watch_cancels(), name="cancel-watch"),
        ]
        try:
            yield
        finally:
            inference.runner = None
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await worker.close()
            await close_clients()

    app = service_app("Kiln inference", runtime, alongside=working)
    app.state.runtime = runtime
    return app


def main() -> None:
    settings = InferenceSettings()
    serve(create_app(settings), settings)
