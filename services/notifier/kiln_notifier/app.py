"""Wiring: the service runtime (database, outbox relay), the faust worker feeding the event
handlers, and the webhook sender started once the runtime is up."""

import asyncio
import contextlib
import logging
from typing import Any

import faust

from kiln_contracts import Event
from kiln_notifier.config import NotifierSettings
from kiln_notifier.consumers import make_handlers
from kiln_notifier.delivery import WebhookSender
from kiln_notifier.models import make_tables
from kiln_runtime.faust_support import attach_processor, make_faust_app, run_worker
from kiln_runtime.job_object import FileLinks
from kiln_runtime.logs import configure_logging
from kiln_runtime.service import ServiceRuntime

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
    senders: list[WebhookSender] = []

    def wake_senders(_event: Event) -> None:
        # A committed event may have recorded deliveries: send them now, not at the next poll.
        for sender in senders:
            sender.wake()

    attach_processor(
        app, runtime, make_handlers(tables, file_links(settings)), on_commit=wake_senders
    )
    sender_tasks: list[asyncio.Task[Any]] = []

    @app.task  # type: ignore[untyped-decorator]  # faust's are untyped
    async def send_webhooks() -> None:
        await runtime.started.wait()
        task = asyncio.current_task()
        if task is not None:
            sender_tasks.append(task)
        sender = WebhookSender(settings, tables, runtime.sessions, runtime.relay.wake)
        senders.append(sender)
        log.info("webhook sender started")
        try:
            await sender.run()
        finally:
            senders.remove(sender)

    async def stop_runtime(_sender: Any, *_args: Any, **_kwargs: Any) -> None:
        # After the consumer stopped: end in-flight attempts (their leases make them due again),
        # then the outbox relay, the producer and the database. attach_processor starts the
        # runtime but does not stop it.
        for task in sender_tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await runtime.stop()

    app.on_before_shutdown.connect(stop_runtime)  # type: ignore[arg-type]  # mode's stub is narrower than its calls
    _ = send_webhooks
    return app


def main() -> None:
    settings = NotifierSettings()
    configure_logging(settings.service_name, settings.log_level)
    # faust makes its datadir with os.mkdir, which needs the parent to exist.
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    run_worker(create_app(settings), loglevel=settings.log_level)
