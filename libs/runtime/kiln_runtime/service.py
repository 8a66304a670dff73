"""The parts every service process starts and stops the same way: its database (with the
inbox/outbox tables), the idempotent producer, the outbox relay, and readiness checks."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

from aiokafka import AIOKafkaProducer
from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncEngine

from kiln_contracts import Event
from kiln_runtime.consuming import EventProcessor, Handler, KafkaEventConsumer
from kiln_runtime.db import SessionFactory, database_reachable, make_engine, make_session_factory
from kiln_runtime.health import Readiness, ReadinessCheck, kafka_check
from kiln_runtime.messaging import MessagingTables
from kiln_runtime.outbox import OutboxRelay, make_producer
from kiln_runtime.settings import ServiceSettings

log = logging.getLogger(__name__)


class ServiceRuntime:
    def __init__(
        self,
        settings: ServiceSettings,
        metadata: MetaData,
        tables: MessagingTables,
        extra_checks: Mapping[str, ReadinessCheck] | None = None,
        migrate: Callable[[AsyncEngine], Awaitable[None]] | None = None,
    ) -> None:
        """`migrate` brings the database's schema up to date at start (say, Alembic's
        `upgrade head`); without it, `metadata.create_all` makes the missing tables."""
        self.settings = settings
        self.metadata = metadata
        self.tables = tables
        self._extra_checks = dict(extra_checks or {})
        self._migrate = migrate
        self._engine: AsyncEngine | None = None
        self._sessions: SessionFactory | None = None
        self._producer: AIOKafkaProducer | None = None
        self._relay: OutboxRelay | None = None
        self._relay_task: asyncio.Task[None] | None = None
        self.readiness: Readiness | None = None
        self.started = asyncio.Event()

    @property
    def engine(self) -> AsyncEngine:
        assert self._engine is not None, "runtime not started"
        return self._engine

    @property
    def sessions(self) -> SessionFactory:
        assert self._sessions is not None, "runtime not started"
        return self._sessions

    @property
    def relay(self) -> OutboxRelay:
        assert self._relay is not None, "runtime not started"
        return self._relay

    async def start(self) -> None:
        self._engine = make_engine(self.settings.database_url)
        self._sessions = make_session_factory(self._engine)
        if self._migrate is not None:
            await self._migrate(self._engine)
        else:
            async with self._engine.begin() as conn:
                await conn.run_sync(self.metadata.create_all)
        bootstrap = self.settings.kafka_bootstrap
        self._producer = await start_producer(bootstrap)
        self._relay = OutboxRelay(
            self._sessions,
            self.tables,
            self._producer,
            service=self.settings.service_name,
            batch_size=self.settings.outbox_batch_size,
            poll_interval_s=self.settings.outbox_poll_interval_s,
            producer_factory=lambda: start_producer(bootstrap),
        )
        self._relay_task = asyncio.create_task(self._relay.run(), name="outbox-relay")
        engine = self._engine

        async def database() -> bool:
            return await database_reachable(engine)

        relay = self._relay

        async def kafka() -> bool:
            return await kafka_check(relay.producer)()  # the relay may have a new producer

        self.readiness = Readiness({"database": database, "kafka": kafka, **self._extra_checks})
        self.started.set()

    @contextlib.asynccontextmanager
    async def consuming(
        self,
        handlers: Mapping[str, Handler],
        on_commit: Callable[[Event], None] | None = None,
    ) -> AsyncIterator[EventProcessor]:
        """Consume the handlers' topics (aiokafka, commit after each batch) while inside."""
        processor = EventProcessor(
            self.sessions,
            self.tables,
            consumer=self.settings.service_name,
            handlers=handlers,
            on_commit=on_commit,
        )
        consumer = KafkaEventConsumer(
            processor, bootstrap=self.settings.kafka_bootstrap, group_id=self.settings.service_name
        )
        await consumer.start()
        task = asyncio.create_task(_keep_running(consumer.run), name="consumer")
        try:
            yield processor
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await consumer.stop()

    async def stop(self) -> None:
        """Idempotent: faust and a service's own shutdown hook may both call it."""
        if self._relay_task is not None:
            self._relay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._relay_task
            self._relay_task = None
        if self._relay is not None:
            self._producer = self._relay.producer  # the relay may have replaced the first one
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None


async def start_producer(bootstrap: str, attempts: int = 60) -> AIOKafkaProducer:
    """Start an idempotent producer, waiting for the broker for up to `attempts` seconds."""
    for attempt in range(1, attempts + 1):
        producer = make_producer(bootstrap)
        try:
            await producer.start()
            return producer
        except Exception:
            await producer.stop()
            if attempt == attempts:
                raise
            log.warning("Kafka at %s not reachable yet (attempt %d)", bootstrap, attempt)
            await asyncio.sleep(1.0)
    raise RuntimeError("unreachable")


async def _keep_running(loop: Callable[[], Awaitable[None]]) -> None:
    """Restart a consumer loop that died of an unexpected error instead of going deaf."""
    while True:
        try:
            await loop()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("consumer loop failed; restarting in 1 s")
            await asyncio.sleep(1.0)
