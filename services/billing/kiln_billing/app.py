"""Billing as a faust worker: `python -m kiln_billing`."""

from kiln_billing.config import BillingSettings
from kiln_billing.consumers import make_handlers
from kiln_billing.models import MESSAGING, Base
from kiln_runtime.catalog import load_catalog
from kiln_runtime.faust_support import attach_processor, make_faust_app, run_worker
from kiln_runtime.logs import configure_logging
from kiln_runtime.service import ServiceRuntime

settings = BillingSettings()
runtime = ServiceRuntime(settings, Base.metadata, MESSAGING)
app = make_faust_app(runtime)
attach_processor(app, runtime, make_handlers(load_catalog(settings.catalog_file)))


def main() -> None:
    configure_logging(settings.service_name, settings.log_level)
    run_worker(app, settings.log_level)
