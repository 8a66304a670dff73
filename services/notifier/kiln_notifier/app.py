"""The notifier: `python -m kiln_notifier` turns job and webhook events into signed deliveries
(handlers.py), sends them (sender.py) and serves /healthz, /readyz and /metrics."""

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from datetime import timedelta

from fastapi import FastAPI

from kiln_crypto import SecretsKeyring
from kiln_notifier.config import NotifierSettings
from kiln_notifier.handlers import Notifier
from kiln_notifier.migrate import upgrade_connection
from kiln_notifier.sender import WebhookSender
from kiln_notifier.tables import make_tables
from kiln_runtime.http import serve, service_app
from kiln_runtime.job_object import FileLinks
from kiln_runtime.service import ServiceRuntime

log = logging.getLogger(__name__)


def file_links(settings: NotifierSettings) -> FileLinks:
    return FileLinks(
        public_url=settings.public_url,
        signing_key=settings.files_signing_key,
        ttl_s=settings.files_url_ttl_s,
    )


def create_app(settings: NotifierSettings | None = None) -> FastAPI:
    settings = settings or NotifierSettings()
    # Raises SecretsKeyError (the process does not start) without a usable KILN_SECRETS_KEYS.
    keyring = SecretsKeyring.from_setting(settings.secrets_keys.get_secret_value())
    tables = make_tables()
    notifier = Notifier(
        tables,
        file_links(settings),
        lease=timedelta(seconds=settings.delivery_lease_s),
        keyring=keyring,
    )
    runtime = ServiceRuntime(
        settings,
        tables.metadata,
        tables.messaging,
        # The migration that sealed the clear secrets of earlier releases needs it.
        migrate=functools.partial(upgrade_connection, keyring=keyring),
        handlers=notifier.handlers(),
    )

    @contextlib.asynccontextmanager
    async def sending(rt: ServiceRuntime) -> AsyncIterator[None]:
        sender = WebhookSender(settings, tables, rt, keyring=keyring)
        notifier.sender = sender
        task = asyncio.create_task(sender.run(), name="webhook-sender")
        log.info("webhook sender started")
        try:
            yield
        finally:
            # In-flight attempts end here; their leases make them due again after a restart.
            notifier.sender = None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app = service_app("Kiln notifier", runtime, alongside=sending)
    app.state.runtime = runtime
    return app


def main() -> None:
    settings = NotifierSettings()
    serve(create_app(settings), settings)
