"""Billing: `python -m kiln_billing` consumes job and credit events (handlers.py) and serves
/healthz, /readyz and /metrics."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from kiln_billing import repository
from kiln_billing.config import BillingSettings
from kiln_billing.handlers import make_handlers
from kiln_billing.metrics import LEDGER_TOTAL
from kiln_billing.migrate import upgrade_connection
from kiln_billing.tables import MESSAGING, Base
from kiln_runtime.catalog import load_catalog
from kiln_runtime.http import serve, service_app
from kiln_runtime.service import ServiceRuntime

log = logging.getLogger(__name__)


async def refresh_ledger_gauges(runtime: ServiceRuntime) -> None:
    try:
        totals = await runtime.read(repository.cached_totals)
    except Exception:
        log.warning("could not read the ledger totals", exc_info=True)
        return
    LEDGER_TOTAL.labels("granted").set(totals.granted)
    LEDGER_TOTAL.labels("available").set(totals.available)
    LEDGER_TOTAL.labels("reserved").set(totals.reserved)
    LEDGER_TOTAL.labels("spent").set(totals.spent)


def create_app(settings: BillingSettings) -> FastAPI:
    runtime = ServiceRuntime(
        settings,
        Base.metadata,
        MESSAGING,
        migrate=upgrade_connection,
        handlers=make_handlers(load_catalog(settings.catalog_file)),
    )

    @contextlib.asynccontextmanager
    async def ledger_gauges(rt: ServiceRuntime) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                await refresh_ledger_gauges(rt)
                await asyncio.sleep(settings.ledger_gauges_interval_s)

        task = asyncio.create_task(loop(), name="ledger-gauges")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app = service_app("Kiln billing", runtime, alongside=ledger_gauges)
    app.state.runtime = runtime
    return app


def main() -> None:
    settings = BillingSettings()
    serve(create_app(settings), settings)
