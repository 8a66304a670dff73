"""Emitting events: handlers collect envelopes in an `Outbox`, which is written in the same
transaction as the change; `OutboxRelay` publishes committed rows with an idempotent producer."""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    UnknownProducerId,
)
from google.protobuf.message import Message
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from kiln_contracts import encode, new_event
from kiln_contracts.v1.envelope_pb2 import Envelope
from kiln_runtime.db import SessionFactory, transaction
from kiln_runtime.messaging import MessagingTables, utcnow
from kiln_runtime.metrics import EVENTS_PRODUCED, OUTBOX_BACKLOG

log = logging.getLogger(__name__)

# After these an idempotent producer cannot go on: its producer id or sequence numbers are no
# longer the broker's (a broker restarted while a batch was in flight, say). A new producer, with
# a new producer id, takes over; the rows were not marked published, so they go again and
# consumers drop the duplicates by event id.
PRODUCER_DEAD_ERRORS = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    InvalidProducerEpoch,
    ProducerFenced,
)


class Outbox:
    """The events one transaction emits. `trace_id` carries over from the consumed event."""

    def __init__(self, trace_id: str = "") -> None:
        self.trace_id = trace_id
        self.envelopes: list[Envelope] = []

    def emit(
        self, event_type: str, message: Message, *, account_id: str, job_id: str = ""
    ) -> Envelope:
        envelope = new_event(
            event_type, message, account_id=account_id, job_id=job_id, trace_id=self.trace_id
        )
        self.envelopes.append(envelope)
        return envelope

    async def write(self, session: AsyncSession, tables: MessagingTables) -> None:
        if not self.envelopes:
            return
        await session.execute(
            insert(tables.outbox),
            [
                {
                    "topic": env.type,
                    "key": env.account_id,
                    "event_id": env.event_id,
                    "payload": encode(env),
                    "created_at": utcnow(),
                }
                for env in self.envelopes
            ],
        )


def make_producer(bootstrap: str) -> AIOKafkaProducer:
    # aiokafka defaults to acks=1 without idempotence; DESIGN.md asks for both.
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=2,
        request_timeout_ms=15000,
    )


class OutboxRelay:
    def __init__(
        self,
        sessions: SessionFactory,
        tables: MessagingTables,
        producer: AIOKafkaProducer,
        *,
        service: str,
        batch_size: int = 500,
        poll_interval_s: float = 0.5,
        keep_published: timedelta = timedelta(hours=1),
        producer_factory: Callable[[], Awaitable[AIOKafkaProducer]] | None = None,
    ) -> None:
        self._sessions = sessions
        self._tables = tables
        self._producer = producer
        self._service = service
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_s
        self._keep_published = keep_published
        self._wakeup = asyncio.Event()
        self._producer_factory = producer_factory

    @property
    def producer(self) -> AIOKafkaProducer:
        """The producer in use (a new one after the old one could not go on)."""
        return self._producer

    def wake(self) -> None:
        self._wakeup.set()

    async def _renew_producer(self) -> None:
        if self._producer_factory is None:
            return
        with contextlib.suppress(Exception):
            await self._producer.stop()
        self._producer = await self._producer_factory()
        log.warning("%s: a new Kafka producer publishes the outbox", self._service)

    async def run(self) -> None:
        rounds = 0
        while True:
            try:
                published = await self.publish_pending()
                rounds += 1
                if rounds % 600 == 0:
                    await self.prune_published()
            except asyncio.CancelledError:
                raise
            except PRODUCER_DEAD_ERRORS:
                log.exception("outbox relay: the Kafka producer cannot go on; replacing it")
                published = 0
                try:
                    await self._renew_producer()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("outbox relay: no new Kafka producer yet; retrying")
                    await asyncio.sleep(1.0)
            except Exception:
                # Broker or database away: the rows stay unpublished and are retried.
                log.exception("outbox relay round failed; retrying")
                published = 0
                await asyncio.sleep(1.0)
            if published >= self._batch_size:
                continue
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=self._poll_interval_s)
            except TimeoutError:
                pass
            self._wakeup.clear()

    async def publish_pending(self) -> int:
        outbox = self._tables.outbox
        async with self._sessions() as session:
            query = (
                select(outbox.c.id, outbox.c.topic, outbox.c.key, outbox.c.payload)
                .where(outbox.c.published_at.is_(None))
                .order_by(outbox.c.id)
                .limit(self._batch_size)
            )
            if session.get_bind().dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            rows = (await session.execute(query)).all()
            if not rows:
                OUTBOX_BACKLOG.labels(self._service).set(0)
                await session.rollback()
                return 0
            # Sent in id order; the idempotent producer keeps that order per partition.
            futures = [
                await self._producer.send(row.topic, value=row.payload, key=row.key.encode())
                for row in rows
            ]
            await asyncio.gather(*futures)
            await session.execute(
                update(outbox)
                .where(outbox.c.id.in_([row.id for row in rows]))
                .values(published_at=utcnow())
            )
            backlog = await session.scalar(
                select(func.count()).select_from(outbox).where(outbox.c.published_at.is_(None))
            )
            await session.commit()
        for row in rows:
            EVENTS_PRODUCED.labels(self._service, row.topic).inc()
        OUTBOX_BACKLOG.labels(self._service).set(backlog or 0)
        return len(rows)

    async def prune_published(self) -> None:
        outbox = self._tables.outbox
        cutoff = utcnow() - self._keep_published
        async with transaction(self._sessions) as session:
            await session.execute(
                outbox.delete().where(
                    outbox.c.published_at.is_not(None), outbox.c.published_at < cutoff
                )
            )
