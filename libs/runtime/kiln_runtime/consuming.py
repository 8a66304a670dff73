"""Consuming events exactly once in effect: at-least-once delivery, idempotent handling.

`EventProcessor` is the transport-independent core: for one decoded event it opens a
transaction, records the inbox row (skipping an event id it has seen), runs the handler, and
writes the handler's outbox rows — all or nothing. `KafkaEventConsumer` (aiokafka) and the
faust agents of billing, scheduler and notifier both feed it, and commit offsets only after it
returns.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from kiln_contracts import Event, EventDecodeError, decode
from kiln_runtime.db import SessionFactory, transaction
from kiln_runtime.messaging import MessagingTables, utcnow
from kiln_runtime.metrics import EVENTS_CONSUMED, EVENTS_DEAD_LETTERED, HANDLER_LATENCY
from kiln_runtime.outbox import Outbox

log = logging.getLogger(__name__)

Handler = Callable[[AsyncSession, Event, Outbox], Awaitable[None]]


class EventProcessor:
    def __init__(
        self,
        sessions: SessionFactory,
        tables: MessagingTables,
        *,
        consumer: str,
        handlers: Mapping[str, Handler],
        on_commit: Callable[[Event], None] | None = None,
    ) -> None:
        self._sessions = sessions
        self._tables = tables
        self.consumer = consumer
        self.handlers = dict(handlers)
        self._on_commit = on_commit

    @property
    def topics(self) -> list[str]:
        return sorted(self.handlers)

    async def process(self, event: Event) -> bool:
        """Handle `event` once. Returns False when it was a duplicate or has no handler."""
        handler = self.handlers.get(event.type)
        if handler is None:
            EVENTS_CONSUMED.labels(self.consumer, event.type, "ignored").inc()
            return False
        started = time.perf_counter()
        inbox = self._tables.inbox
        async with transaction(self._sessions) as session:
            seen = await session.scalar(
                select(inbox.c.id).where(
                    inbox.c.consumer == self.consumer, inbox.c.event_id == event.event_id
                )
            )
            if seen is not None:
                EVENTS_CONSUMED.labels(self.consumer, event.type, "duplicate").inc()
                return False
            await session.execute(
                insert(inbox).values(
                    consumer=self.consumer,
                    event_id=event.event_id,
                    event_type=event.type,
                    received_at=utcnow(),
                )
            )
            outbox = Outbox(trace_id=event.envelope.trace_id)
            await handler(session, event, outbox)
            await outbox.write(session, self._tables)
        HANDLER_LATENCY.labels(self.consumer, event.type).observe(time.perf_counter() - started)
        EVENTS_CONSUMED.labels(self.consumer, event.type, "processed").inc()
        if self._on_commit is not None:
            self._on_commit(event)
        return True

    async def process_raw(self, raw: bytes, *, topic: str, max_attempts: int = 5) -> None:
        """Decode and process, retrying transient failures; give up loudly on poison input."""
        try:
            event = decode(raw)
        except EventDecodeError:
            log.error("undecodable event on %s skipped", topic)
            EVENTS_DEAD_LETTERED.labels(self.consumer, topic).inc()
            return
        for attempt in range(1, max_attempts + 1):
            try:
                await self.process(event)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                EVENTS_CONSUMED.labels(self.consumer, event.type, "failed").inc()
                if attempt == max_attempts:
                    log.exception(
                        "event %s (%s) failed %d times; skipped",
                        event.event_id,
                        event.type,
                        attempt,
                    )
                    EVENTS_DEAD_LETTERED.labels(self.consumer, topic).inc()
                    return
                log.warning(
                    "event %s (%s) failed, retrying", event.event_id, event.type, exc_info=True
                )
                await asyncio.sleep(min(0.2 * 2**attempt, 5.0))


# Range, not aiokafka's default round robin: every topic is keyed by account on the same number
# of partitions, and range gives each member the same partition numbers of every topic, so the
# member that got a job's `job.dispatched` also gets its `job.cancel_requested`. Round robin
# deals the partitions of all topics out in turn; with 4 inference workers a cancel then went
# to another worker than the one running the job (found by the scaling benchmark's stacks).
PARTITION_ASSIGNORS = (RangePartitionAssignor,)


class KafkaEventConsumer:
    """An aiokafka consumer group member that feeds an EventProcessor and commits late."""

    def __init__(
        self,
        processor: EventProcessor,
        *,
        bootstrap: str,
        group_id: str,
        topics: Iterable[str] | None = None,
    ) -> None:
        self._processor = processor
        self._topics = list(topics) if topics is not None else processor.topics
        self._consumer = AIOKafkaConsumer(
            *self._topics,
            bootstrap_servers=bootstrap,
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_records=200,
            partition_assignment_strategy=PARTITION_ASSIGNORS,
        )

    async def start(self) -> None:
        await self._consumer.start()

    async def stop(self) -> None:
        await self._consumer.stop()

    async def run(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=500)
            for partition, messages in batches.items():
                for message in messages:
                    if message.value is None:
                        continue
                    await self._processor.process_raw(message.value, topic=partition.topic)
                # Offsets only after the database commit of every message before them.
                await self._consumer.commit(
                    {TopicPartition(partition.topic, partition.partition): messages[-1].offset + 1}
                )
