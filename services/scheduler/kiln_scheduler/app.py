"""The scheduler as a faust worker: `python -m kiln_scheduler`. The event handlers run in the
faust agent; the timer (deadlines, lost workers, retries due, queue metrics) is a task started
once the runtime is up."""

import asyncio
import logging

from kiln_runtime.catalog import load_catalog
from kiln_runtime.db import transaction
from kiln_runtime.faust_support import attach_processor, make_faust_app, run_worker
from kiln_runtime.logs import configure_logging
from kiln_runtime.messaging import utcnow
from kiln_runtime.outbox import Outbox
from kiln_runtime.service import ServiceRuntime
from kiln_scheduler import repository
from kiln_scheduler.config import SchedulerSettings
from kiln_scheduler.consumers import Scheduler
from kiln_scheduler.models import MESSAGING, Base

log = logging.getLogger(__name__)

settings = SchedulerSettings()
runtime = ServiceRuntime(settings, Base.metadata, MESSAGING, migrate=repository.migrate)
scheduler = Scheduler(load_catalog(settings.catalog_file), settings)
app = make_faust_app(runtime)
attach_processor(app, runtime, scheduler.handlers())


async def tick_once() -> None:
    outbox = Outbox()
    async with transaction(runtime.sessions) as session:
        await repository.lock(session)
        await scheduler.tick(session, outbox, utcnow())
        await outbox.write(session, runtime.tables)
    if outbox.envelopes:
        runtime.relay.wake()


@app.task  # type: ignore[untyped-decorator]  # faust's are untyped
async def run_timer() -> None:
    await runtime.started.wait()
    log.info("scheduler timer started (every %.2f s)", settings.tick_interval_s)
    while True:
        try:
            await tick_once()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("scheduler tick failed; next one in %.2f s", settings.tick_interval_s)
        await asyncio.sleep(settings.tick_interval_s)


def main() -> None:
    configure_logging(settings.service_name, settings.log_level)
    run_worker(app, settings.log_level)
