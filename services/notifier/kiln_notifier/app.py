"""Wiring: the service runtime (database, outbox relay), the faust worker feeding the event
handlers, and the webhook sender started once the runtime is up."""

import logging

import faust
from kiln_runtime.faust_support import attach_processor, make_faust_app, run_worker
from kiln_runtime.job_object import FileLinks
from kiln_runtime.logs import configure_logging
from kiln_runtime.service import ServiceRuntime

from kiln_notifier.config import NotifierSettings
from kiln_notifier.consumers import make_handlers
from kiln_notifier.delivery import WebhookSender
from kiln_notifier.models import make_tables

log = logging.getLogger(__name__)


def file_links(settings: NotifierSettings) -> FileLinks:
    return FileLinks(
        public_url=settings.public_url,
        signing_key=settings.files_signing_key,
        ttl_s=settings.files_url_ttl_s,
    )


def create_app(settings: NotifierSettings | None = None) -> faust.App:
    settings = settings or NotifierSettings()
    tables = make_tables()
    runtime = ServiceRuntime(settings, tables.metadata, tables.messaging)
    app = make_faust_app(runtime)
    attach_processor(app, runtime, make_handlers(tables, file_links(settings)))

    @app.task  # type: ignore[untyped-decorator]  # faust's are untyped
    async def send_webhooks() -> None:
        await runtime.started.wait()
        sender = WebhookSender(settings, tables, runtime.sessions, runtime.relay.wake)
        log.info("webhook sender started")
        await sender.run()

    _ = send_webhooks
    return app


def main() -> None:
    settings = NotifierSettings()
    configure_logging(settings.service_name, settings.log_level)
    run_worker(create_app(settings), loglevel=settings.log_level)
