"""What every service process starts and stops the same way (docs/architecture.md, "The event
runtime"): its database (schema migrated first), the idempotent producer and the outbox
publisher, the group commit for writes that no event caused, the consumer of its topics, the
inbox pruning, and the readiness checks its health server reports."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Protocol, TypeVar

from sqlalchemy import Connection, MetaData, delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from kiln_runtime.batches import BatchTransaction, EventHandlers
from kiln_runtime.consumer import ConsumerSettings, EventConsumer
from kiln_runtime.db import Database, SessionFactory
from kiln_runtime.failures import Backoff
from kiln_runtime.group_commit import GroupCommit
from kiln_runtime.health import Readiness, ReadinessCheck, kafka_check
from kiln_runtime.messaging import MessagingTables, utcnow
from kiln_runtime.metrics import INBOX_PRUNED
from kiln_runtime.migrations import Migrate
from kiln_runtime.outbox import OutboxPublisher, start_producer
from kiln_runtime.settings import ServiceSettings
from kiln_runtime.unit import Unit

log = logging.getLogger(__name__)

T = TypeVar("T")
Clock = Callable[[], datetime]


class Transactions(Protocol):
    """What code that reads and writes needs of the runtime (ServiceRuntime in a service,
    kiln_runtime.testing.EventDriver in a test without a broker)."""

    clock: Clock

    @property
    def db(self) -> Database: ...

    async def write(self, work: Callable[[Unit], T]) -> T: ...

    async def read(self, work: Callable[[Connection], T]) -> T: ...


class ServiceRuntime:
    def __init__(
        self,
        settings: ServiceSettings,
        metadata: MetaData,
        tables: MessagingTables,
        *,
        migrate: Migrate | None = None,
        handlers: EventHandlers | None = None,
        extra_checks: Mapping[str, ReadinessCheck] | None = None,
        clock: Clock = utcnow,
    ) -> None:
        """`migrate` brings the schema up to date at start (Alembic's `upgrade head` on a sync
        connection); without it, `metadata.create_all` makes what is missing (tests only)."""
        self.settings = settings
        self.metadata = metadata
        self.tables = tables
        self.handlers = handlers
        self.clock = clock
        self._migrate = migrate
        self._extra_checks = dict(extra_checks or {})
        self._db: Database | None = None
        self._publisher: OutboxPublisher | None = None
        self._group_commit: GroupCommit | None = None
        self._consumer: EventConsumer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.readiness: Readiness | None = None
        self.started = asyncio.Event()

    # --- what services use --------------------------------------------------------------------

    @property
    def db(self) -> Database:
        assert self._db is not None, "runtime not started"
        return self._db

    @property
    def sessions(self) -> SessionFactory:
        """Async ORM sessions, for paths that write rarely (see `SessionOutbox`)."""
        return self.db.sessions

    @property
    def publisher(self) -> OutboxPublisher:
        assert self._publisher is not None, "runtime not started"
        return self._publisher

    # The old name: rare paths write with `SessionOutbox`, then wake the publisher.
    relay = publisher

    @property
    def engine(self) -> AsyncEngine:
        """The async engine (rare paths that need one; the runtime itself works on `db`)."""
        return self.db.async_engine

    @property
    def consumer(self) -> EventConsumer | None:
        return self._consumer

    async def write(self, work: Callable[[Unit], T]) -> T:
        """Run `work(unit)` in a (shared) write transaction; its events go out on commit."""
        assert self._group_commit is not None, "runtime not started"
        return await self._group_commit(work)

    async def read(self, work: Callable[[Connection], T]) -> T:
        return await self.db.read(work)

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self, *, connect_kafka: bool = True) -> None:
        """Open the database (migrated), the producer and publisher, the consumer. Without
        `connect_kafka` (tests of HTTP routes alone): the database and the group commit only;
        the events written stay in the outbox table."""
        s = self.settings
        self._db = Database(
            s.database_url, service=s.service_name, busy_timeout_s=s.database_busy_timeout_s
        )
        if self._migrate is not None:
            migrate = self._migrate
            await self._db.on_writer(lambda: _run_in_transaction(self.db, migrate))
        else:
            await self._db.on_writer(lambda: self.metadata.create_all(self.db.engine))
        bootstrap = s.kafka_bootstrap
        producer = await start_producer(bootstrap) if connect_kafka else None
        lease = timedelta(seconds=s.outbox_lease_s)
        self._publisher = OutboxPublisher(
            self._db,
            self.tables,
            producer,
            service=s.service_name,
            owner=s.instance,
            lease=lease,
            recover_interval_s=s.outbox_recover_interval_s,
            recover_batch=s.outbox_batch_size,
            producer_factory=lambda: start_producer(bootstrap),
            clock=self.clock,
        )
        self._group_commit = GroupCommit(
            self._db, self.tables, self._publisher, service=s.service_name, clock=self.clock
        )
        if not connect_kafka:
            self.readiness = Readiness({})
            self.started.set()
            return
        self._tasks = [
            asyncio.create_task(self._publisher.run_sender(), name="outbox-sender"),
            asyncio.create_task(self._publisher.run(), name="outbox-recovery"),
            asyncio.create_task(self._prune_inbox_loop(), name="inbox-pruning"),
        ]
        if self.handlers is not None:
            batch = BatchTransaction(
                self.tables,
                self.handlers,
                group=s.service_name,
                service=s.service_name,
                owner=s.instance,
                lease=lease,
                clock=self.clock,
                take_acked=self._publisher.take_acked,
                return_acked=self._publisher.return_acked,
            )
            self._consumer = EventConsumer(
                self._db,
                self.tables,
                self._publisher,
                self.handlers,
                batch,
                ConsumerSettings(
                    bootstrap=bootstrap,
                    group=s.service_name,
                    max_batch=s.consumer_max_batch,
                    poll_timeout_ms=s.consumer_poll_timeout_ms,
                    commit_interval_s=s.consumer_commit_interval_s,
                    session_timeout_s=s.kafka_session_timeout_s,
                    heartbeat_interval_s=s.kafka_heartbeat_interval_s,
                    rebalance_timeout_s=s.kafka_rebalance_timeout_s,
                    poison_attempts=s.consumer_poison_attempts,
                    follow_group_offsets=not s.database_shared,
                    transient_backoff=Backoff(0.1, 5.0),
                ),
                service=s.service_name,
            )
            await self._consumer.start()
        db = self._db
        publisher = self._publisher

        async def database() -> bool:
            return await db.reachable()

        async def kafka() -> bool:
            return await kafka_check(publisher.producer)()  # it may have a new producer

        checks: dict[str, ReadinessCheck] = {"database": database, "kafka": kafka}
        consumer = self._consumer
        if consumer is not None:

            async def consuming() -> bool:
                return consumer.running

            checks["consumer"] = consuming
        self.readiness = Readiness({**checks, **self._extra_checks})
        self.started.set()
        log.info("%s runtime started (instance %s)", s.service_name, s.instance)

    async def stop(self) -> None:
        """Idempotent. Stops consuming first, then sends what is in flight, then the rest."""
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
            self._consumer = None
        if self._publisher is not None:
            with contextlib.suppress(Exception):
                await self._publisher.flush()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self._publisher is not None:
            with contextlib.suppress(Exception):
                await self._publisher.stop()
            self._publisher = None
        if self._db is not None:
            await self._db.dispose()
            self._db = None

    # --- housekeeping -------------------------------------------------------------------------

    async def prune_inbox(self, chunk: int = 10_000) -> int:
        """Delete inbox rows past the retention window, a chunk per transaction."""
        inbox = self.tables.inbox
        cutoff = self.clock() - timedelta(seconds=self.settings.inbox_retention_s)
        total = 0
        while True:

            def prune(connection: Connection) -> int:
                ids = select(inbox.c.id).where(inbox.c.received_at < cutoff).limit(chunk)
                return connection.execute(
                    delete(inbox).where(inbox.c.id.in_(ids.scalar_subquery()))
                ).rowcount

            deleted = await self.db.write(prune)
            total += deleted
            if deleted < chunk:
                break
        if total:
            INBOX_PRUNED.labels(self.settings.service_name).inc(total)
        return total

    async def _prune_inbox_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.inbox_prune_interval_s)
            try:
                await self.prune_inbox()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("inbox pruning failed; next round later", exc_info=True)


def _run_in_transaction(database: Database, migrate: Migrate) -> None:
    with database.connect() as connection:
        migrate(connection)
