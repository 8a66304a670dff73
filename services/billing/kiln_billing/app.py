"""Billing as a faust worker: `python -m kiln_billing`."""

import logging

from kiln_billing import repository
from kiln_billing.config import BillingSettings
from kiln_billing.consumers import make_handlers
from kiln_billing.metrics import LEDGER_TOTAL
from kiln_billing.migrate import upgrade_database
from kiln_billing.models import MESSAGING, Base
from kiln_runtime.catalog import load_catalog
from kiln_runtime.faust_support import attach_processor, make_faust_app, run_worker
from kiln_runtime.logs import configure_logging
from kiln_runtime.service import ServiceRuntime

log = logging.getLogger(__name__)

settings = BillingSettings()
runtime = ServiceRuntime(settings, Base.metadata, MESSAGING, migrate=upgrade_database)
app = make_faust_app(runtime)
attach_processor(app, runtime, make_handlers(load_catalog(settings.catalog_file)))


@app.timer(interval=settings.ledger_gauges_interval_s)  # type: ignore[untyped-decorator]
async def refresh_ledger_gauges() -> None:
    if not runtime.started.is_set():
        return
    try:
        async with runtime.sessions() as session:
            totals = await repository.cached_totals(session)
    except Exception:
        log.warning("could not read the ledger totals", exc_info=True)
        return
    LEDGER_TOTAL.labels("granted").set(totals.granted)
    LEDGER_TOTAL.labels("available").set(totals.available)
    LEDGER_TOTAL.labels("reserved").set(totals.reserved)
    LEDGER_TOTAL.labels("spent").set(totals.spent)


def main() -> None:
    configure_logging(settings.service_name, settings.log_level)
    run_worker(app, settings.log_level)
