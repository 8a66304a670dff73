"""The scheduler as a faust worker: `python -m kiln_scheduler`."""

from kiln_runtime.catalog import load_catalog
from kiln_runtime.faust_support import attach_processor, make_faust_app, run_worker
from kiln_runtime.logs import configure_logging
from kiln_runtime.service import ServiceRuntime
from kiln_scheduler.config import SchedulerSettings
from kiln_scheduler.consumers import make_handlers
from kiln_scheduler.models import MESSAGING, Base

settings = SchedulerSettings()
runtime = ServiceRuntime(settings, Base.metadata, MESSAGING)
app = make_faust_app(runtime)
attach_processor(
    app, runtime, make_handlers(load_catalog(settings.catalog_file), settings.pool_capacity)
)


def main() -> None:
    configure_logging(settings.service_name, settings.log_level)
    run_worker(app, settings.log_level)
