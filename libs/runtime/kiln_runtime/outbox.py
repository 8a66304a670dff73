"""Publishing the outbox (docs/architecture.md, "Publish on commit").

Every transaction writes the events it emits as outbox rows, leased to the process that wrote
them (`owner`, `lease_until`). Right after the commit, that process hands the rows to
`OutboxPublisher.publish`, which sends them at once with an idempotent producer. Once Kafka
acknowledged a row, its id waits in `acked` and the next write transaction of the process (or
the recovery round, when there is none) deletes it.

The recovery round runs every `recover_interval_s`. It claims, with one conditional UPDATE,
rows whose lease ran out (their writer died, or could not reach Kafka) and this process's own
rows whose send failed, and sends them. The claim moves the lease, so two instances on one
database never both take a row: a row is sent by its writer, or by the one instance whose
claim moved its lease. (A writer that dies after Kafka took a row but before the row was
deleted leaves it to be sent again: consumers drop that copy by event id.)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    UnknownProducerId,
)
from sqlalchemy import Connection, Delete, Table, bindparam, delete, func, or_, select, update

from kiln_contracts import EventDecodeError, current_topic, decode_envelope
from kiln_runtime.db import Database
from kiln_runtime.messaging import MessagingTables, utcnow
from kiln_runtime.metrics import EVENTS_PRODUCED, EVENTS_RECOVERED, OUTBOX_BACKLOG
from kiln_runtime.unit import OutgoingEvent, headers_from_blob

log = logging.getLogger(__name__)

# An acknowledged outbox row: its id and its event id. Deleted by both, because SQLite hands a
# deleted row's id to the next row (no AUTOINCREMENT): an id acknowledged twice (a row sent again
# by the recovery round while its first send was slow) must not delete a newer row.
AckedRow = tuple[int, str]


@functools.cache
def _delete_acked_statement(outbox: Table) -> Delete:
    # Built once per table: constructing a tuple IN per batch cost more than running it.
    return delete(outbox).where(
        outbox.c.id == bindparam("row_id"), outbox.c.event_id == bindparam("row_event")
    )


def delete_acked(connection: Connection, tables: MessagingTables, rows: Sequence[AckedRow]) -> None:
    if rows:
        arguments = [{"row_id": row_id, "row_event": event_id} for row_id, event_id in rows]
        connection.execute(
            _delete_acked_statement(tables.outbox),
            arguments[0] if len(arguments) == 1 else arguments,
        )


# After these an idempotent producer cannot go on: its producer id or sequence numbers are no
# longer the broker's (a broker restarted while a batch was in flight, say). A new producer
# takes over; the rows were not deleted, so they go again and consumers drop the duplicates.
PRODUCER_DEAD_ERRORS = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    InvalidProducerEpoch,
    ProducerFenced,
)


def make_producer(bootstrap: str, *, linger_ms: int = 0) -> AIOKafkaProducer:
    # aiokafka defaults to acks=1 without idempotence; docs/architecture.md ("Principles") asks
    # for both. No linger: a committed batch's rows are handed over in one turn of the event
    # loop and leave as one request anyway, and waiting 1 ms more cost every hop of a job
    # 1.5 ms (docs/BENCHMARKS.md).
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=linger_ms,
        request_timeout_ms=15000,
    )


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


def _event_type(payload: bytes) -> str:
    """The type of an event row read back (a dead letter has headers and is not asked)."""
    try:
        return decode_envelope(payload).type
    except EventDecodeError:
        return ""


class OutboxPublisher:
    def __init__(
        self,
        database: Database,
        tables: MessagingTables,
        producer: AIOKafkaProducer | None,
        *,
        service: str,
        owner: str,
        lease: timedelta,
        recover_interval_s: float,
        recover_batch: int = 500,
        producer_factory: Callable[[], Awaitable[AIOKafkaProducer]] | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._db = database
        self._tables = tables
        self._producer = producer
        self._service = service
        self.owner = owner
        self.lease = lease
        self._recover_interval_s = recover_interval_s
        self._recover_batch = recover_batch
        self._producer_factory = producer_factory
        self._clock = clock
        self._in_flight: set[int] = set()
        self._acked: list[AckedRow] = []
        # Taken on the database writer thread (a batch deletes them), added on the event loop.
        self._acked_lock = threading.Lock()
        self._failed: set[int] = set()
        self._pending: set[asyncio.Future[None]] = set()
        self._queue: asyncio.Queue[tuple[list[OutgoingEvent], asyncio.Future[None] | None]] = (
            asyncio.Queue()
        )
        self._first_round = True
        self._renewing = asyncio.Lock()
        self._wakeup = asyncio.Event()
        self._rounds = 0

    @property
    def producer(self) -> AIOKafkaProducer:
        """The producer in use (a new one after the old one could not go on)."""
        assert self._producer is not None, "started without Kafka"
        return self._producer

    # --- publish on commit --------------------------------------------------------------------

    def publish(self, rows: Sequence[OutgoingEvent]) -> None:
        """Send committed rows now, after every row handed over before them. Never raises: a
        row that cannot go now stays in the outbox and the recovery round sends it."""
        if rows:
            self._queue.put_nowait((list(rows), None))

    async def _publish_and_wait(self, rows: Sequence[OutgoingEvent]) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((list(rows), done))
        await done

    async def run_sender(self) -> None:
        """The one task that hands rows to the producer, so that they go in commit order."""
        while True:
            rows, done = await self._queue.get()
            ids = [row.row_id for row in rows if row.row_id is not None]
            self._in_flight.update(ids)
            futures: list[asyncio.Future[Any]] = []
            try:
                assert self._producer is not None, "started without Kafka"
                for row in rows:
                    futures.append(
                        await self._producer.send(
                            # A row written before an upgrade may name a retired topic.
                            current_topic(row.topic),
                            value=row.value,
                            key=row.key.encode(),
                            headers=list(row.headers) or None,
                        )
                    )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the producer refused the send (stopped, broker away)
                refused: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                refused.set_exception(exc)
                futures.extend([refused] * (len(rows) - len(futures)))
            task = asyncio.ensure_future(self._settle(rows, futures, done))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
            self._queue.task_done()

    async def _settle(
        self,
        rows: Sequence[OutgoingEvent],
        futures: Sequence[asyncio.Future[Any]],
        done: asyncio.Future[None] | None,
    ) -> None:
        results = await asyncio.gather(*futures, return_exceptions=True)
        dead = False
        failed = 0
        for row, result in zip(rows, results, strict=True):
            if row.row_id is not None:
                self._in_flight.discard(row.row_id)
            if isinstance(result, BaseException):
                failed += 1
                if row.row_id is not None:
                    self._failed.add(row.row_id)
                dead = dead or isinstance(result, PRODUCER_DEAD_ERRORS)
                continue
            EVENTS_PRODUCED.labels(self._service, row.label).inc()
            if row.row_id is not None:
                with self._acked_lock:
                    self._acked.append((row.row_id, row.event_id))
        if done is not None and not done.done():
            done.set_result(None)
        if failed:
            log.warning(
                "%s: %d outbox row(s) not sent; the recovery round sends them",
                self._service,
                failed,
            )
            self._wakeup.set()
        if dead:
            await self._renew_producer()

    async def _renew_producer(self) -> None:
        if self._producer_factory is None or self._renewing.locked():
            return
        async with self._renewing:
            old = self._producer
            assert old is not None
            try:
                self._producer = await self._producer_factory()
            except Exception:
                log.exception("%s: no new Kafka producer yet", self._service)
                return
            log.warning("%s: a new Kafka producer publishes the outbox", self._service)
            with contextlib.suppress(Exception):
                await old.stop()

    # --- acknowledged rows --------------------------------------------------------------------

    def take_acked(self) -> list[AckedRow]:
        """The rows Kafka acknowledged since the last call: delete them in your transaction, or
        give them back with `return_acked` when it rolls back."""
        with self._acked_lock:
            rows, self._acked = self._acked, []
        return rows

    def return_acked(self, rows: Sequence[AckedRow]) -> None:
        with self._acked_lock:
            self._acked.extend(rows)

    def delete_rows(self, connection: Connection, rows: Sequence[AckedRow]) -> None:
        delete_acked(connection, self._tables, rows)

    # --- recovery -----------------------------------------------------------------------------

    def wake(self) -> None:
        self._wakeup.set()

    async def run(self) -> None:
        while True:
            try:
                sent = await self.recover_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning(
                    "%s: outbox recovery round failed; retrying", self._service, exc_info=True
                )
                sent = 0
            if sent >= self._recover_batch:
                continue
            # Not asyncio.wait_for, which on Python 3.11 can drop the cancellation that stops
            # this loop (see WebhookSender.run).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._recover_interval_s):
                    await self._wakeup.wait()
            self._wakeup.clear()

    async def recover_once(self) -> int:
        """Delete acknowledged rows, then claim and send what no live writer will send."""
        acked = self.take_acked()
        failed = sorted(self._failed)
        in_flight = sorted(self._in_flight)  # read here, on the loop that changes it
        first = self._first_round
        now = self._clock()

        def claim(connection: Connection) -> list[OutgoingEvent]:
            self.delete_rows(connection, acked)
            return self._claim(connection, now, failed, first, in_flight)

        try:
            rows = await self._db.write(claim)
        except BaseException:
            self.return_acked(acked)
            raise
        self._first_round = False
        self._failed.difference_update(failed)
        self._rounds += 1
        if self._rounds % 10 == 1:
            await self._refresh_backlog()
        if not rows:
            return 0
        EVENTS_RECOVERED.labels(self._service).inc(len(rows))
        await self._publish_and_wait(rows)
        return len(rows)

    def _claim(
        self,
        connection: Connection,
        now: datetime,
        failed: list[int],
        first: bool,
        in_flight: list[int],
    ) -> list[OutgoingEvent]:
        outbox = self._tables.outbox
        claimable = [outbox.c.lease_until < now]
        if failed:
            claimable.append(outbox.c.id.in_(failed) & (outbox.c.owner == self.owner))
        if first:  # rows this instance wrote in an earlier life
            claimable.append(outbox.c.owner == self.owner)
        condition = or_(*claimable)
        if in_flight:
            condition = condition & outbox.c.id.not_in(in_flight)
        chosen = select(outbox.c.id).where(condition).order_by(outbox.c.id)
        chosen = chosen.limit(self._recover_batch)
        if connection.dialect.name == "postgresql":
            chosen = chosen.with_for_update(skip_locked=True)
        result = connection.execute(
            update(outbox)
            .where(outbox.c.id.in_(chosen.scalar_subquery()), condition)
            .values(owner=self.owner, lease_until=now + self.lease)
            .returning(
                outbox.c.id,
                outbox.c.topic,
                outbox.c.key,
                outbox.c.event_id,
                outbox.c.payload,
                outbox.c.headers,
            )
        )
        rows = sorted(result.all(), key=lambda r: r.id)
        return [
            OutgoingEvent(
                topic=r.topic,
                key=r.key,
                event_id=r.event_id,
                value=r.payload,
                headers=tuple(headers_from_blob(r.headers)),
                row_id=r.id,
                event_type="" if r.headers else _event_type(r.payload),
            )
            for r in rows
        ]

    async def _refresh_backlog(self) -> None:
        outbox = self._tables.outbox

        def count(connection: Connection) -> Any:
            return connection.execute(select(func.count()).select_from(outbox)).scalar()

        try:
            OUTBOX_BACKLOG.labels(self._service).set(int(await self._db.read(count) or 0))
        except Exception:
            log.debug("outbox backlog not counted", exc_info=True)

    async def flush(self, timeout_s: float = 5.0) -> None:
        """Wait for the sends in flight (at shutdown), then delete what Kafka acknowledged."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._queue.join()
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout_s)
        acked = self.take_acked()
        if acked:
            try:
                await self._db.write(lambda c: self.delete_rows(c, acked))
            except Exception:
                log.warning(
                    "%s: acknowledged outbox rows not deleted; they go again",
                    self._service,
                    exc_info=True,
                )

    async def stop(self) -> None:
        if self._producer is None:
            return
        await self.flush()
        with contextlib.suppress(Exception):
            await self._producer.stop()


class SessionOutbox:
    """Events emitted from code that works with an async ORM session (rare paths: key and
    webhook management, admin routes). Its rows carry no owner and an expired lease, so the
    publisher's next recovery round sends them: call `runtime.publisher.wake()` after the
    commit. Hot paths use `ServiceRuntime.write`, which sends at once."""

    def __init__(self, trace_id: str = "") -> None:
        self.trace_id = trace_id
        self.envelopes: list[Any] = []

    def emit(self, event_type: str, message: Any, *, account_id: str, job_id: str = "") -> Any:
        from kiln_contracts import new_event

        envelope = new_event(
            event_type, message, account_id=account_id, job_id=job_id, trace_id=self.trace_id
        )
        self.envelopes.append(envelope)
        return envelope

    async def write(self, session: Any, tables: MessagingTables) -> None:
        from sqlalchemy import insert

        from kiln_contracts import encode, topic_of

        if not self.envelopes:
            return
        now = utcnow()
        await session.execute(
            insert(tables.outbox),
            [
                {
                    "topic": topic_of(env.type),
                    "key": env.account_id,
                    "event_id": env.event_id,
                    "payload": encode(env),
                    "headers": None,
                    "created_at": now,
                    "owner": "",
                    "lease_until": now,
                }
                for env in self.envelopes
            ],
        )


# The name the services' rare paths know it by.
Outbox = SessionOutbox
