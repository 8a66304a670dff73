"""The notifier's sender on a real SQLite database, sending real HTTP to receivers on loopback.

`notifier` gives the tables, a session factory, the settings (a compressed retry schedule,
loopback allowed, a `v1a` signing key) and helpers to feed it events through the real handlers
and to run the sender until a condition holds. `receiver(script)` starts a local HTTP server
that answers each request with the next status of `script` (the last one repeats) and keeps
every request it got. No broker: what the sender emits stays in the outbox table, where the
tests read it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from google.protobuf.message import Message
from sqlalchemy import select

from kiln_contracts import Event, decode, encode, new_event
from kiln_contracts.v1 import common_pb2, jobs_pb2, webhooks_pb2
from kiln_crypto import SecretsKeyring
from kiln_notifier import handlers
from kiln_notifier.config import NotifierSettings
from kiln_notifier.migrate import upgrade_connection
from kiln_notifier.sender import WebhookSender
from kiln_notifier.tables import NotifierTables, make_tables
from kiln_runtime.db import Database, make_sync_engine
from kiln_runtime.job_object import FileLinks
from kiln_runtime.testing import EventDriver
from tests.integration.billing.postgres_cluster import PostgresCluster

LINKS = FileLinks(public_url="http://127.0.0.1:8000/", signing_key="k" * 32, ttl_s=3600)
ACCOUNT = "acct_test"
DEFAULT_SECRET = "whsec_" + base64.b64encode(b"\x07" * 32).decode()
# The operator's keyring (KILN_SECRETS_KEYS): the first key seals, the older one still opens
# (a rotation under way). Fixed keys: pytest imports this file apart from the tests' own import.
FIRST_KEY = base64.urlsafe_b64encode(b"\x0b" * 32).decode()
OLDER_KEY = base64.urlsafe_b64encode(b"\x0c" * 32).decode()
KEYRING = SecretsKeyring([FIRST_KEY, OLDER_KEY])


@dataclass
class Request:
    at: float
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    url: str
    script: list[tuple[int, dict[str, str], float]]  # (status, headers, delay before answering)
    requests: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def got(self) -> list[Request]:
        with self.lock:
            return list(self.requests)


def start_receiver(
    script: list[int | tuple[int, dict[str, str], float]],
) -> tuple[Receiver, ThreadingHTTPServer]:
    steps = [s if isinstance(s, tuple) else (s, {}, 0.0) for s in script]
    receiver = Receiver(url="", script=steps)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            with receiver.lock:
                index = len(receiver.requests)
                receiver.requests.append(
                    Request(
                        time.monotonic(),
                        self.path,
                        {k.lower(): v for k, v in self.headers.items()},
                        body,
                    )
                )
            status, headers, delay = receiver.script[min(index, len(receiver.script) - 1)]
            if delay:
                time.sleep(delay)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return receiver, server


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    servers: list[ThreadingHTTPServer] = []

    def make(*script: int | tuple[int, dict[str, str], float]) -> Receiver:
        made, server = start_receiver(list(script) or [204])
        servers.append(server)
        return made

    yield make
    for server in servers:
        server.shutdown()


def job_event(
    event_type: str, job_id: str, webhook_url: str = "", *, account_id: str = ACCOUNT
) -> Event:
    spec = common_pb2.JobSpec(
        model="kiln/prompt-to-image",
        input_json=json.dumps({"prompt": "a lighthouse"}),
        webhook_url=webhook_url,
    )
    spec.created_at.FromDatetime(datetime.now(UTC))
    message: Message
    if event_type == "job.completed":
        message = jobs_pb2.JobCompleted(spec=spec, price_millicredits=5000, attempt=1)
    elif event_type == "job.failed":
        message = jobs_pb2.JobFailed(
            spec=spec, error_code="INFERENCE_ERROR", error_message="no", attempt=1
        )
    else:
        message = jobs_pb2.JobCanceled(spec=spec)
    return decode(encode(new_event(event_type, message, account_id=account_id, job_id=job_id)))


def endpoint_event(
    endpoint_id: str,
    url: str = "",
    secret: str = "",
    *,
    is_default: bool = False,
    deleted: bool = False,
    event_types: tuple[str, ...] = (),
    sealed_by: SecretsKeyring | None = KEYRING,
    revision: int = 0,
) -> Event:
    """An endpoint change as the gateway announces it: the secret sealed with KEYRING (or
    `sealed_by`); with `sealed_by=None`, in clear, as gateways before sealed secrets sent it."""
    message = webhooks_pb2.WebhookEndpointChanged(
        endpoint_id=endpoint_id,
        url=url,
        is_default=is_default,
        deleted=deleted,
        event_types=list(event_types),
        revision=revision,
    )
    if secret and sealed_by is not None:
        message.sealed_secret = sealed_by.seal(secret)
    elif secret:
        message.secret = secret
    return decode(encode(new_event("webhooks.endpoint_changed", message, account_id=ACCOUNT)))


@dataclass
class Notifier:
    """The notifier's handlers and sender on a test database, no broker: what they emit stays
    in the outbox table, where `emitted` reads it."""

    settings: NotifierSettings
    tables: NotifierTables
    db: Database
    signing_key_b64: str

    def __post_init__(self) -> None:
        self.handlers = handlers.Notifier(
            self.tables,
            LINKS,
            lease=timedelta(seconds=self.settings.delivery_lease_s),
            keyring=KEYRING,
        )
        self.driver = EventDriver(
            self.db, self.tables.messaging, self.handlers.handlers(), group="notifier"
        )

    def sender(self, settings: NotifierSettings | None = None) -> WebhookSender:
        return WebhookSender(settings or self.settings, self.tables, self.driver, keyring=KEYRING)

    async def feed(self, event: Event) -> list[str]:
        """Handle one event as the consumer would; the ids of the deliveries it made."""
        before = {d.id for d in await self.deliveries()}
        await self.driver.process(event)
        return sorted(d.id for d in await self.deliveries() if d.id not in before)

    async def run_until(
        self,
        done: Callable[[], Awaitable[bool]],
        timeout_s: float = 20.0,
        sender: WebhookSender | None = None,
    ) -> float:
        """Run a sender (handed new deliveries at once, as in the service) until `done()`;
        returns the seconds it took."""
        sender = sender or self.sender()
        self.handlers.sender = sender
        task = asyncio.create_task(sender.run())
        started = time.monotonic()
        try:
            while not await done():
                if time.monotonic() - started > timeout_s:
                    raise AssertionError("timed out waiting for the sender")
                await asyncio.sleep(0.02)
            return time.monotonic() - started
        finally:
            self.handlers.sender = None
            task.cancel()
            # Bounded: a sender that ignores its cancellation fails here, not at the timeout.
            stopped, _ = await asyncio.wait({task}, timeout=10)
            assert stopped, "the sender did not stop when cancelled"
            error = None if task.cancelled() else task.exception()
            if error is not None:
                raise error

    async def deliveries(self) -> list[Any]:
        table = self.tables.deliveries
        return await self.db.read(lambda c: list(c.execute(select(table)).all()))

    async def attempts(self, delivery_id: str) -> list[Any]:
        t = self.tables.delivery_attempts
        return await self.db.read(
            lambda c: list(
                c.execute(
                    select(t).where(t.c.delivery_id == delivery_id).order_by(t.c.attempt)
                ).all()
            )
        )

    async def emitted(self, event_type: str) -> list[Message]:
        outbox = self.tables.messaging.outbox
        rows = await self.db.read(lambda c: list(c.execute(select(outbox)).all()))
        found = []
        for row in rows:
            event = decode(row.payload)
            if event.type == event_type:
                found.append(event.message)
        return found


@pytest.fixture
async def notifier(tmp_path: Path) -> AsyncIterator[Notifier]:
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    settings = NotifierSettings(
        database_url=f"sqlite:///{tmp_path}/notifier.db",
        data_dir=tmp_path,
        kafka_bootstrap="127.0.0.1:1",  # never contacted
        allow_loopback_urls=True,
        retry_schedule_s=[0.2, 0.2],
        delivery_timeout_s=2.0,
        delivery_lease_s=5.0,
        delivery_poll_interval_s=0.02,
        webhook_signing_key=key,
        metrics_refresh_s=0.05,
    )
    tables = make_tables()
    db = Database(settings.database_url, service="notifier")
    await db.on_writer(lambda: db.write_now(upgrade_connection))
    made = Notifier(settings, tables, db, key)
    await made.feed(endpoint_event(f"default_{ACCOUNT}", secret=DEFAULT_SECRET, is_default=True))
    try:
        yield made
    finally:
        await db.dispose()


# A bare notifier database on SQLite and on PostgreSQL, for tests of its statements (no sender).
@pytest.fixture(params=("sqlite", "postgresql"))
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/notifier.db"
    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
    return cluster.new_database("notifier", "psycopg")


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    made = make_sync_engine(database_url)
    try:
        yield made
    finally:
        made.dispose()
