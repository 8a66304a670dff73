"""The Kafka edge of the event runtime: an aiokafka consumer group member that feeds polled
batches to `BatchTransaction` (docs/architecture.md, "The event runtime").

* One poll, one batch: `getmany` returns what the fetcher holds (up to `max_batch`); nothing
  waits for a batch to fill.
* Order: a partition's events are handled in offset order; the positions in the database say
  where each partition goes on, and a batch commits only if they did not move under it.
* Assignment: range, so that each member gets the same partition numbers of every topic (all
  topics are keyed by account on one partition count: a job's events of every topic reach the
  same member). On assignment the member seeks to the database's positions; on revocation it
  finishes the batch in hand (the coordinator waits for it) and commits offsets.
* Kafka's committed offsets follow the database about once a second; they feed lag metrics and
  autoscaling, and correctness never depends on them.
* Failures: `failures.is_transient` ones hold every partition (paused, the member stays in its
  group) and retry the batch with backoff until it passes; any other failure splits the batch
  and handles its events one by one, and an event that keeps failing goes to the dead-letter
  topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.partitioner import murmur2
from sqlalchemy import Connection, select

from kiln_runtime.batches import (
    BatchResult,
    BatchTransaction,
    Delivery,
    EventHandlers,
    Fenced,
    decode_deliveries,
    first_offsets,
)
from kiln_runtime.db import Database
from kiln_runtime.failures import Backoff, PoisonEvent, describe, is_transient
from kiln_runtime.messaging import MessagingTables
from kiln_runtime.metrics import (
    BATCH_LATENCY,
    BATCH_RETRIES,
    BATCH_SIZE,
    CONSUMER_LAG,
    EVENTS_CONSUMED,
    EVENTS_DEAD_LETTERED,
)
from kiln_runtime.outbox import OutboxPublisher

log = logging.getLogger(__name__)

# Range, not aiokafka's default round robin: round robin deals the partitions of all topics out
# in turn, so with 4 inference workers a job's cancel reached another worker than the one
# running it (found by the scaling benchmark's stacks).
PARTITION_ASSIGNORS = (RangePartitionAssignor,)


@dataclass(frozen=True)
class ConsumerSettings:
    bootstrap: str
    group: str
    max_batch: int = 500
    poll_timeout_ms: int = 200
    commit_interval_s: float = 1.0
    session_timeout_s: float = 10.0
    heartbeat_interval_s: float = 2.0
    rebalance_timeout_s: float = 60.0
    poison_attempts: int = 3
    transient_backoff: Backoff = field(default_factory=lambda: Backoff(0.1, 5.0))
    poison_backoff: Backoff = field(default_factory=lambda: Backoff(0.05, 0.5))
    # The database is this member's own, not the group's: on assignment, a partition starts no
    # earlier than the group's committed offset, which other members moved while they held it.
    follow_group_offsets: bool = False


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, consumer: EventConsumer) -> None:
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._consumer.partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._consumer.partitions_assigned(assigned)


class EventConsumer:
    def __init__(
        self,
        database: Database,
        tables: MessagingTables,
        publisher: OutboxPublisher,
        handlers: EventHandlers,
        batch: BatchTransaction,
        settings: ConsumerSettings,
        *,
        service: str,
    ) -> None:
        self._db = database
        self._tables = tables
        self._publisher = publisher
        self._handlers = handlers
        self._batch = batch
        self._settings = settings
        self._service = service
        self._consumer: AIOKafkaConsumer | None = None
        self._busy = asyncio.Lock()  # held while a batch is handled; revocation waits for it
        self._positions: dict[TopicPartition, int | None] = {}
        self._assigned_at: dict[TopicPartition, float] = {}  # wall-clock time, as aiokafka's
        self._to_commit: dict[TopicPartition, int] = {}
        # Assigned partitions whose deliveries came before their positions were read: where
        # to fetch them again from (see `_current`).
        self._unplaced: dict[TopicPartition, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.assigned = asyncio.Event()
        self.holding = False  # retrying a transient failure
        self.partition_count = 0  # of the topics it reads (co-partitioned), once assigned

    @property
    def topics(self) -> list[str]:
        return self._handlers.topics

    def silent_partitions(self, limit_s: float) -> frozenset[int]:
        """The partition numbers held whose broker has not answered a fetch for `limit_s`
        seconds (counted from the assignment until the first answer). aiokafka stamps a
        partition at every fetch response, empty ones too (every `poll_timeout_ms` when idle),
        and fetches a partition again once what it returned is taken: a silent partition is a
        broker away, records fetched and not yet taken, or a batch being handled (nothing is
        fetched meanwhile), which a timer that judges others by the events they sent must not
        take for their silence."""
        consumer = self._consumer
        if consumer is None:
            return frozenset()
        now = time.time()  # aiokafka's stamps are wall-clock time
        silent: set[int] = set()
        for tp in list(self._positions):
            try:
                stamp_ms = consumer.last_poll_timestamp(tp)
            except (AssertionError, AttributeError):  # revoked meanwhile
                continue
            since = stamp_ms / 1000 if stamp_ms is not None else self._assigned_at.get(tp, now)
            if now - since > limit_s:
                silent.add(tp.partition)
        return frozenset(silent)

    @property
    def partitions(self) -> frozenset[int]:
        return frozenset(tp.partition for tp in self._positions)

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        s = self._settings
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap,
            group_id=s.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=s.max_batch,
            partition_assignment_strategy=PARTITION_ASSIGNORS,
            session_timeout_ms=int(s.session_timeout_s * 1000),
            heartbeat_interval_ms=int(s.heartbeat_interval_s * 1000),
            rebalance_timeout_ms=int(s.rebalance_timeout_s * 1000),
            fetch_max_wait_ms=s.poll_timeout_ms,
        )
        self._consumer.subscribe(self.topics, listener=_Listener(self))
        await self._consumer.start()
        self._tasks = [
            asyncio.create_task(self._keep_polling(), name=f"{self._service}-consumer"),
            asyncio.create_task(self._commit_offsets_loop(), name=f"{self._service}-commits"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._consumer is not None:
            async with self._busy:
                await self._commit_offsets()
            await self._consumer.stop()
            self._consumer = None

    @property
    def running(self) -> bool:
        return bool(self._tasks) and not any(t.done() for t in self._tasks)

    # --- assignment ---------------------------------------------------------------------------

    async def partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self._busy:  # the batch in hand commits (or rolls back) first
            try:
                await self._commit_offsets()
            except Exception as exc:  # a member whose session expired cannot commit
                # Harmless: the positions that count are in the database.
                log.warning("%s: offset commit on revocation failed (%s)", self._service, exc)
            for tp in revoked:
                self._positions.pop(tp, None)
                self._unplaced.pop(tp, None)
                self._to_commit.pop(tp, None)
                CONSUMER_LAG.labels(self._service, tp.topic, str(tp.partition)).set(0)
            if revoked:
                self.assigned.clear()
                await self._tell_assignment()
        if revoked:
            log.info("%s: partitions revoked: %s", self._service, _names(revoked))

    async def partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        # aiokafka starts every partition's fetch stamp afresh at each assignment
        self._assigned_at = dict.fromkeys(assigned, time.time())
        # Until the positions are read, the partitions' deliveries cannot be placed: retried
        # (the database away) rather than left unknown, which aiokafka would only log.
        attempt = 0
        while True:
            try:
                stored = await self._db.read(lambda c: self._stored_positions(c, assigned))
                if self._settings.follow_group_offsets:
                    stored = await self._catch_up_with_group(assigned, stored)
                break
            except Exception as exc:
                attempt += 1
                log.warning(
                    "%s: reading the assigned partitions' positions failed (%s); retry %d",
                    self._service,
                    describe(exc),
                    attempt,
                )
                await asyncio.sleep(self._settings.transient_backoff.delay(attempt))
        assert self._consumer is not None
        for tp in assigned:
            position = stored.get((tp.topic, tp.partition))
            unplaced = self._unplaced.pop(tp, None)
            fetch_from = position if position is not None else unplaced
            if fetch_from is not None:
                self._consumer.seek(tp, fetch_from)
            self._positions[tp] = position
        await self._tell_assignment()
        self.assigned.set()
        log.info("%s: partitions assigned: %s", self._service, _names(assigned))

    async def _catch_up_with_group(
        self, assigned: set[TopicPartition], stored: dict[tuple[str, int], int]
    ) -> dict[tuple[str, int], int]:
        """Move the stored positions that lag the group's committed offsets up to them.

        Only for a member whose database is its own (inference): a partition it held before,
        then another member handled, comes back with this database's old position, and
        starting there would run every dispatch handled meanwhile again. The committed offset
        is where the group got to (each member commits after its own transaction), so moving
        there skips nothing unhandled. A shared database is never behind the group's commits,
        and there the move could only skip work (a restored database), so it is not made."""
        assert self._consumer is not None
        consumer = self._consumer
        lagging = sorted(
            (tp for tp in assigned if (tp.topic, tp.partition) in stored),
            key=lambda tp: (tp.topic, tp.partition),
        )
        committed = await asyncio.gather(*(consumer.committed(tp) for tp in lagging))
        moves = {
            (tp.topic, tp.partition): (stored[(tp.topic, tp.partition)], offset)
            for tp, offset in zip(lagging, committed, strict=True)
            if offset is not None and offset > stored[(tp.topic, tp.partition)]
        }
        if not moves:
            return stored
        moved = await self._db.write(lambda c: self._batch.move_positions(c, moves))
        for (topic, partition), (before, after) in moves.items():
            if (topic, partition) in moved:
                stored[(topic, partition)] = after
                log.info(
                    "%s: %s:%d handled up to %d by another member; going on from there, not %d",
                    self._service,
                    topic,
                    partition,
                    after,
                    before,
                )
        return stored

    async def _tell_assignment(self) -> None:
        """Give the handlers' `on_assigned` the partitions held now (after every change)."""
        if self._consumer is None:
            return
        counts = [len(self._consumer.partitions_for_topic(t) or ()) for t in self.topics]
        self.partition_count = max(counts, default=0)
        if self._handlers.on_assigned is None:
            return
        hook = self._handlers.on_assigned
        numbers = frozenset(tp.partition for tp in self._positions)
        count = max(self.partition_count, 1)
        await self._db.write(lambda c: hook(c, numbers, count))

    def holds_key(self, key: str) -> bool:
        """Whether this member handles the events keyed `key` now (Kafka's default partitioner
        on the key; every topic is keyed by account and has the same partition count)."""
        if not self.partition_count:
            return False
        return partition_of(key, self.partition_count) in self.partitions

    def _stored_positions(
        self, connection: Connection, tps: set[TopicPartition]
    ) -> dict[tuple[str, int], int]:
        p = self._tables.positions
        rows = connection.execute(
            select(p.c.topic, p.c.partition, p.c.next_offset).where(
                p.c.consumer == self._settings.group, p.c.topic.in_({tp.topic for tp in tps})
            )
        ).all()
        return {(r.topic, r.partition): r.next_offset for r in rows}

    # --- polling ------------------------------------------------------------------------------

    async def _keep_polling(self) -> None:
        while True:
            try:
                await self._poll_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: consumer loop failed; going on in 1 s", self._service)
                await asyncio.sleep(1.0)

    async def _poll_once(self) -> None:
        assert self._consumer is not None
        fetched = await self._consumer.getmany(
            timeout_ms=self._settings.poll_timeout_ms, max_records=self._settings.max_batch
        )
        if not fetched:
            return
        paused = self._stop_fetching(sum(len(messages) for messages in fetched.values()))
        try:
            await self._handle_fetched(fetched)
        finally:
            if paused and self._consumer is not None:
                self._consumer.resume(*self._consumer.paused())

    def _stop_fetching(self, taken: int) -> bool:
        """No fetch while a batch is handled; the next one goes when it is done.

        aiokafka sends the next fetch as soon as `getmany` took the records, and the broker
        answers it with the first event that arrives during the batch: the next batch would be
        that event alone, and the ones that come a moment later wait for the one after. Fetched
        once the batch is done, the next batch is everything that arrived meanwhile, for one
        round trip, and no batch waits for anything to arrive (docs/architecture.md, "The
        event runtime"). Called in the same turn of the event loop as `getmany` returned, so
        before aiokafka's fetch task runs. A full batch may have left records in the fetcher:
        the next batch is there already, so it fetches as before.

        No fetch answer stamps a partition meanwhile: a batch longer than a scheduler's
        silence limit makes every partition silent, the safe side (its workers are judged
        again from when the batch is done)."""
        assert self._consumer is not None
        if taken >= self._settings.max_batch:
            return False
        self._consumer.pause(*self._consumer.assignment())
        return True

    async def _handle_fetched(self, fetched: Mapping[TopicPartition, Sequence[Any]]) -> None:
        started = asyncio.get_running_loop().time()
        deliveries = [
            Delivery(
                topic=tp.topic,
                partition=tp.partition,
                offset=m.offset,
                key=m.key,
                value=m.value,
                headers=tuple(m.headers or ()),
            )
            for tp, messages in fetched.items()
            for m in messages
        ]
        decoded = decode_deliveries(
            deliveries, group=self._settings.group, event_types=self._handlers.event_types
        )
        try:
            await self._handle(decoded)
        except Exception:
            # Whatever failed (the database away while re-reading positions, a dead letter
            # that could not be written), the fetch position is past these deliveries: back to
            # where each partition stands, or the next batch would move past them.
            self._rewind(first_offsets(decoded))
            raise
        BATCH_SIZE.labels(self._service).observe(len(decoded))
        BATCH_LATENCY.labels(self._service).observe(asyncio.get_running_loop().time() - started)

    def _current(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        """Deliveries of partitions still ours, not before where the partition stands. A
        partition assigned but not yet placed (its positions being read) is fetched again
        from its first delivery here, not dropped."""
        out = []
        unplaced: dict[TopicPartition, int] = {}
        for d in deliveries:
            tp = TopicPartition(d.topic, d.partition)
            if tp not in self._positions:
                if self._consumer is not None and tp in self._consumer.assignment():
                    unplaced[tp] = min(unplaced.get(tp, d.offset), d.offset)
                continue
            position = self._positions[tp]
            if position is not None and d.offset < position:
                continue
            out.append(d)
        for tp, first in unplaced.items():
            assert self._consumer is not None
            # The earliest ever seen while unplaced (a later call may see later deliveries).
            first = min(first, self._unplaced.get(tp, first))
            self._unplaced[tp] = first
            self._consumer.seek(tp, first)
        return out

    def _expected(self) -> dict[tuple[str, int], int | None]:
        return {(tp.topic, tp.partition): pos for tp, pos in self._positions.items()}

    async def _handle(self, deliveries: Sequence[Delivery]) -> None:
        attempt = 0
        while True:
            async with self._busy:
                current = self._current(deliveries)
                if not current:
                    return
                try:
                    expected = self._expected()
                    result = await self._write_batch(current, expected)
                except Fenced as fenced:
                    BATCH_RETRIES.labels(self._service, "fenced").inc()
                    # The whole batch rolled back: its other partitions go back too, or their
                    # deliveries would be dropped here and the next batch move past them.
                    self._rewind(first_offsets(current))
                    await self._refence(fenced)
                    return
                except Exception as exc:
                    if not is_transient(exc):
                        BATCH_RETRIES.labels(self._service, "poison").inc()
                        log.warning(
                            "%s: a batch of %d failed (%s); handling its events one by one",
                            self._service,
                            len(current),
                            describe(exc),
                        )
                        await self._one_by_one(current)
                        return
                    attempt += 1
                    BATCH_RETRIES.labels(self._service, "transient").inc()
                    log.warning(
                        "%s: batch of %d failed transiently (%s); retry %d",
                        self._service,
                        len(current),
                        describe(exc),
                        attempt,
                    )
                else:
                    self._committed(result)
                    return
            await self._hold(self._settings.transient_backoff.delay(attempt))

    async def _one_by_one(self, deliveries: Sequence[Delivery]) -> None:
        """Split a failed batch: each event in its own transaction; one that fails again and
        again (never transiently) goes to the dead-letter topic. Runs holding `_busy`."""
        for d in deliveries:
            attempt = 0
            transient = 0
            while True:
                still = self._current([d])
                if not still:
                    break
                current = still[0]
                expected = self._expected()
                try:
                    result = await self._write_batch([current], expected)
                except Fenced as fenced:
                    BATCH_RETRIES.labels(self._service, "fenced").inc()
                    await self._refence(fenced)
                    break
                except Exception as exc:
                    if is_transient(exc):
                        transient += 1
                        await self._hold(self._settings.transient_backoff.delay(transient))
                        continue
                    attempt += 1
                    if attempt < self._settings.poison_attempts and not isinstance(
                        exc, PoisonEvent
                    ):
                        log.warning(
                            "%s: %s at %s:%d:%d failed (%s); attempt %d",
                            self._service,
                            d.event_type,
                            d.topic,
                            d.partition,
                            d.offset,
                            describe(exc),
                            attempt,
                        )
                        await asyncio.sleep(self._settings.poison_backoff.delay(attempt))
                        continue
                    log.error(
                        "%s: %s at %s:%d:%d failed %d times (%s); dead-lettered",
                        self._service,
                        d.event_type,
                        d.topic,
                        d.partition,
                        d.offset,
                        attempt,
                        describe(exc),
                        exc_info=exc,
                    )
                    await self._dead_letter(current, describe(exc))
                    break
                else:
                    self._committed(result)
                    break

    async def _dead_letter(self, d: Delivery, error: str) -> None:
        transient = 0
        while True:
            expected = self._expected()
            try:
                result = await self._write_batch([d], expected, dead_letter=error)
            except Fenced as fenced:
                await self._refence(fenced)
                return
            except Exception as exc:
                if not is_transient(exc):
                    raise
                transient += 1
                await self._hold(self._settings.transient_backoff.delay(transient))
                continue
            self._committed(result)
            return

    async def _write_batch(
        self,
        deliveries: Sequence[Delivery],
        expected: Mapping[tuple[str, int], int | None],
        *,
        dead_letter: str | None = None,
    ) -> BatchResult:
        """The batch's transaction on the writer thread. Its commit can fail after every
        handler ran (the handlers' own failures are told inside): the handlers hear of that
        rollback too, or what they keep in memory would stay ahead of the rows."""
        try:
            return await self._db.write(
                functools.partial(
                    self._batch.handle,
                    deliveries=deliveries,
                    expected=expected,
                    dead_letter=dead_letter,
                )
            )
        except BaseException:
            self._batch.rolled_back()
            raise

    async def _hold(self, delay_s: float) -> None:
        """Wait out a transient failure: no progress anywhere meanwhile. Nothing is fetched
        while holding: a rebalance during the hold would unpause the partitions and what a
        fetch returned would be lost, and a fetch waits for a rebalance that itself waits for
        the batch in hand (`_busy`). aiokafka's heartbeats keep the member in its group."""
        self.holding = True
        try:
            await asyncio.sleep(delay_s)
        finally:
            self.holding = False

    async def _refence(self, fenced: Fenced) -> None:
        """Another member moved these positions: go on from where the database says."""
        assert self._consumer is not None
        tps = {TopicPartition(t, p) for t, p in fenced.partitions}
        stored = await self._db.read(lambda c: self._stored_positions(c, tps))
        for tp in tps:
            if tp not in self._positions:
                continue
            position = stored.get((tp.topic, tp.partition))
            self._positions[tp] = position
            if position is not None:
                self._consumer.seek(tp, position)
        log.warning("%s: positions moved elsewhere, re-read: %s", self._service, _names(tps))

    def _rewind(self, firsts: Mapping[tuple[str, int], int]) -> None:
        """Fetch again from each partition's known position (the batch's first offset where
        none is stored yet). No database call: it must not fail where the database did."""
        if self._consumer is None:
            return
        for (topic, partition), first in firsts.items():
            tp = TopicPartition(topic, partition)
            if tp not in self._positions:
                continue  # revoked meanwhile: its next owner starts from the database
            position = self._positions[tp]
            self._consumer.seek(tp, first if position is None else position)

    def _committed(self, result: BatchResult) -> None:
        self._publisher.publish(result.outgoing)
        for (topic, partition), next_offset in result.positions.items():
            tp = TopicPartition(topic, partition)
            if tp in self._positions:
                self._positions[tp] = next_offset
                self._to_commit[tp] = next_offset
        for event_type, outcome in result.outcomes:
            EVENTS_CONSUMED.labels(self._service, event_type, outcome).inc()
        for d in result.dead_lettered:
            EVENTS_DEAD_LETTERED.labels(self._service, d.topic).inc()
        for callback in result.callbacks:
            try:
                callback()
            except Exception:
                log.exception("%s: an after-commit callback failed", self._service)

    # --- offsets ------------------------------------------------------------------------------

    async def _commit_offsets_loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.commit_interval_s)
            try:
                await self._commit_offsets()
                self._report_lag()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.debug("%s: offsets not committed this round", self._service, exc_info=True)

    async def _commit_offsets(self) -> None:
        if not self._to_commit or self._consumer is None:
            return
        offsets, self._to_commit = dict(self._to_commit), {}
        try:
            await self._consumer.commit(offsets)
        except Exception:
            # The database holds the positions; Kafka's copy catches up on the next round.
            for tp, offset in offsets.items():
                self._to_commit.setdefault(tp, offset)
            raise

    def _report_lag(self) -> None:
        if self._consumer is None:
            return
        for tp, position in self._positions.items():
            high = self._consumer.highwater(tp)
            if high is None or position is None:
                continue
            CONSUMER_LAG.labels(self._service, tp.topic, str(tp.partition)).set(
                max(high - position, 0)
            )


def partition_of(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives `key` (murmur2, as the producer does)."""
    return int(murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def _names(tps: set[TopicPartition] | Mapping[TopicPartition, object]) -> str:
    return ", ".join(sorted(f"{tp.topic}:{tp.partition}" for tp in tps)) or "none"
