"""The scheduler: `python -m kiln_scheduler` consumes reservations and workers' reports
(handlers.py), runs its timer (deadlines, lost workers, retries due, queue metrics) and serves
/healthz, /readyz and /metrics."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from kiln_runtime.catalog import load_catalog
from kiln_runtime.http import serve, service_app
from kiln_runtime.service import ServiceRuntime
from kiln_scheduler.config import SchedulerSettings
from kiln_scheduler.handlers import Scheduler
from kiln_scheduler.migrate import upgrade_connection
from kiln_scheduler.repository import ChangedElsewhere
from kiln_scheduler.tables import MESSAGING, Base

log = logging.getLogger(__name__)


async def run_timer(
    runtime: ServiceRuntime, scheduler: Scheduler, interval_s: float, silence_s: float
) -> None:
    """Tick while this instance holds partitions; a failed tick reloads the queue. While the
    consumer holds (a transient failure) or the broker is silent on some partitions (an
    outage), the workers' reports wait unread, so their lost-worker clocks start again."""
    consumer = runtime.consumer
    quiet: frozenset[int] = frozenset()
    while True:
        if consumer is not None:
            await consumer.assigned.wait()
        try:
            if consumer is not None:
                silent = consumer.silent_partitions(silence_s)
                if silent - quiet:
                    log.warning(
                        "no fetch answered for %.1f s on partitions %s (a broker away, or a "
                        "batch that long): their workers are not judged until it is",
                        silence_s,
                        sorted(silent),
                    )
                quiet = silent
                if consumer.holding:
                    scheduler.watch_again()
                elif silent:
                    scheduler.watch_again(silent)
            await runtime.write(scheduler.tick)
        except asyncio.CancelledError:
            raise
        except ChangedElsewhere as stale:
            # Still stale after the group commit's own retries (each reads the queue again).
            scheduler.forget()
            log.warning("tick rolled back, its queue read again: %s", stale)
        except Exception:
            scheduler.forget()
            log.exception("scheduler tick failed; next one in %.2f s", interval_s)
        await asyncio.sleep(interval_s)


def create_app(settings: SchedulerSettings) -> FastAPI:
    scheduler = Scheduler(load_catalog(settings.catalog_file), settings)
    runtime = ServiceRuntime(
        settings,
        Base.metadata,
        MESSAGING,
        migrate=upgrade_connection,
        handlers=scheduler.handlers(),
    )

    @contextlib.asynccontextmanager
    async def timer(rt: ServiceRuntime) -> AsyncIterator[None]:
        task = asyncio.create_task(
            run_timer(rt, scheduler, settings.tick_interval_s, settings.broker_silence_s),
            name="scheduler-timer",
        )
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app = service_app("Kiln scheduler", runtime, alongside=timer)
    app.state.runtime = runtime
    return app


def main() -> None:
    settings = SchedulerSettings()
    serve(create_app(settings), settings)
