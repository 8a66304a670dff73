"""The steps between a poll and a commit, as plain functions of their input (docs/architecture.md,
"The event runtime"):

    decode -> drop what is not ours -> [one transaction: fence the positions, drop duplicates,
    handle every event in order, dead letters, inbox rows, outbox rows] -> (the consumer then
    publishes the outbox rows, runs after-commit callbacks and commits offsets)

Nothing here talks to Kafka; `handle_batch` runs on the database writer thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from kiln_contracts import Event, EventDecodeError, decode_envelope, event_of, topic_of
from kiln_runtime.dead_letters import (
    DEAD_LETTER_TOPIC,
    dead_letter_headers,
    dead_letter_id,
    replay_target,
)
from kiln_runtime.messaging import MessagingTables
from kiln_runtime.metrics import EVENTS_MISSED, HANDLER_LATENCY
from kiln_runtime.outbox import AckedRow, delete_acked
from kiln_runtime.unit import OutgoingEvent, Unit, write_outbox

log = logging.getLogger(__name__)

Handler = Callable[[Unit, Event], None]


@dataclass(frozen=True)
class EventHandlers:
    """What a service consumes: one handler per event type, and optional batch hooks.

    `before_batch` sees every event the batch will hand to a handler (say, to load the rows
    they touch in one query); `after_batch` runs once after the last handler, in the same
    transaction (say, one dispatch pass for the whole batch). `on_rollback` is told when a
    transaction that ran handlers rolled back (drop in-memory changes made meanwhile), and
    `on_assigned` when the member got partitions (rebuild in-memory state for them).
    """

    handlers: Mapping[str, Handler]
    before_batch: Callable[[Unit, Sequence[Event]], None] | None = None
    after_batch: Callable[[Unit], None] | None = None
    on_rollback: Callable[[], None] | None = None
    # (connection, the partition numbers this member holds, how many partitions there are)
    on_assigned: Callable[[Connection, frozenset[int], int], None] | None = None

    @property
    def event_types(self) -> list[str]:
        return sorted(self.handlers)

    @property
    def topics(self) -> list[str]:
        """The Kafka topics that carry those types (one topic may carry several)."""
        return sorted({topic_of(event_type) for event_type in self.handlers})


@dataclass
class Delivery:
    """One message as the consumer took it, and what decoding made of it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    event: Event | None = None
    error: str | None = None  # why it cannot be decoded
    skip: str | None = None  # why it is not handled here (it still moves the position)
    skipped_type: str = ""  # the type of an event skipped unparsed

    @property
    def event_type(self) -> str:
        if self.event is not None:
            return self.event.type
        return self.skipped_type or self.topic


def decode_deliveries(
    deliveries: Iterable[Delivery], *, group: str, event_types: Iterable[str]
) -> list[Delivery]:
    """Decode each message; mark those this group does not handle. A topic may carry types a
    group does not take (the scheduler reads `job.ended` for completions and failures, and
    skips the cancels it sent): their payloads are not parsed, and a type this release does
    not know (a later release's, during its rollout) is skipped as well, not dead-lettered."""
    handled = set(event_types)
    out = []
    for d in deliveries:
        target = replay_target(d.headers)
        if target is not None and target != group:
            d.skip = "replay_for_other_group"  # that group's dead letter, not ours
        elif d.value is None:
            d.error = "EventDecodeError: empty message"
        else:
            try:
                envelope = decode_envelope(d.value)
                if envelope.type not in handled:
                    d.skip = "ignored"
                    d.skipped_type = envelope.type
                else:
                    d.event = event_of(envelope)
            except EventDecodeError as exc:
                d.error = f"EventDecodeError: {exc}"
        out.append(d)
    return out


def first_offsets(deliveries: Iterable[Delivery]) -> dict[tuple[str, int], int]:
    """The lowest offset of each (topic, partition) among `deliveries`."""
    first: dict[tuple[str, int], int] = {}
    for d in deliveries:
        key = (d.topic, d.partition)
        first[key] = min(first.get(key, d.offset), d.offset)
    return first


class Fenced(Exception):
    """Another member moved a partition's position since this one read it: it owns it now."""

    def __init__(self, partitions: set[tuple[str, int]]) -> None:
        super().__init__(f"positions moved by another member: {sorted(partitions)}")
        self.partitions = partitions


@dataclass
class BatchResult:
    """What a committed batch leaves for after the commit."""

    outgoing: list[OutgoingEvent]
    callbacks: list[Callable[[], None]]
    positions: dict[tuple[str, int], int]  # the next offset per partition
    outcomes: list[tuple[str, str]] = field(default_factory=list)  # (event type, outcome)
    dead_lettered: list[Delivery] = field(default_factory=list)


class BatchTransaction:
    """Handles deliveries in one database transaction (run it on the writer thread)."""

    def __init__(
        self,
        tables: MessagingTables,
        handlers: EventHandlers,
        *,
        group: str,
        service: str,
        owner: str,
        lease: timedelta,
        clock: Callable[[], datetime],
        take_acked: Callable[[], list[AckedRow]],
        return_acked: Callable[[Sequence[AckedRow]], None],
    ) -> None:
        self._tables = tables
        self._handlers = handlers
        self.group = group
        self._service = service
        self._owner = owner
        self._lease = lease
        self._clock = clock
        self._take_acked = take_acked
        self._return_acked = return_acked
        positions = tables.positions
        inbox = tables.inbox
        # Built once: constructing statements costs more than running them.
        self._move = (
            update(positions)
            .where(
                and_(
                    positions.c.consumer == bindparam("c"),
                    positions.c.topic == bindparam("t"),
                    positions.c.partition == bindparam("p"),
                    positions.c.next_offset == bindparam("expected"),
                )
            )
            .values(next_offset=bindparam("next"), updated_at=bindparam("now"))
        )
        self._first = insert(positions).values(
            consumer=bindparam("c"),
            topic=bindparam("t"),
            partition=bindparam("p"),
            next_offset=bindparam("next"),
            updated_at=bindparam("now"),
        )
        self._seen = select(inbox.c.event_id).where(
            inbox.c.consumer == bindparam("c"),
            inbox.c.event_id.in_(bindparam("ids", expanding=True)),
        )
        self._record = insert(inbox)

    # --- the transaction ----------------------------------------------------------------------

    def handle(
        self,
        connection: Connection,
        deliveries: Sequence[Delivery],
        expected: Mapping[tuple[str, int], int | None],
        *,
        dead_letter: str | None = None,
    ) -> BatchResult:
        """Everything in one transaction. `dead_letter` (an error text) sends every delivery
        to the dead-letter topic instead of its handler."""
        acked = self._take_acked()
        try:
            return self._handle(connection, deliveries, expected, acked, dead_letter)
        except BaseException:
            self._return_acked(acked)
            self.rolled_back()
            raise

    def move_positions(
        self, connection: Connection, moves: Mapping[tuple[str, int], tuple[int, int]]
    ) -> set[tuple[str, int]]:
        """Compare-and-set each stored position from `before` to `after` (the fence's rule:
        only from where this member saw it); the ones that moved. Outside a batch: used when
        a member catches up with its group (docs/architecture.md, "Exactly once, in effect")."""
        now = self._clock()
        moved: set[tuple[str, int]] = set()
        for (topic, partition), (before, after) in sorted(moves.items()):
            params = {
                "c": self.group,
                "t": topic,
                "p": partition,
                "expected": before,
                "next": after,
                "now": now,
            }
            if connection.execute(self._move, params).rowcount == 1:
                moved.add((topic, partition))
        return moved

    def rolled_back(self) -> None:
        """Tell the handlers that a transaction that may have run them rolled back."""
        if self._handlers.on_rollback is not None:
            self._handlers.on_rollback()

    def _handle(
        self,
        connection: Connection,
        deliveries: Sequence[Delivery],
        expected: Mapping[tuple[str, int], int | None],
        acked: list[AckedRow],
        dead_letter: str | None,
    ) -> BatchResult:
        now = self._clock()
        positions = self._fence(connection, deliveries, expected, now)
        unit = Unit(connection, now, self._service)
        outcomes: list[tuple[str, str]] = []
        dead: list[Delivery] = []
        fresh: list[Delivery] = []
        if dead_letter is not None:
            dead = list(deliveries)
        else:
            fresh = self._drop_duplicates(connection, deliveries, outcomes)
            dead = [d for d in deliveries if d.error is not None]
        for d in deliveries:
            if d.skip is not None:
                outcomes.append((d.event_type, d.skip))
        events = [d.event for d in fresh if d.event is not None]
        if events and self._handlers.before_batch is not None:
            self._handlers.before_batch(unit, events)
        for event in events:
            unit.cause = event
            started = time.perf_counter()
            self._handlers.handlers[event.type](unit, event)
            HANDLER_LATENCY.labels(self._service, event.type).observe(time.perf_counter() - started)
            outcomes.append((event.type, "processed"))
        unit.cause = None
        if events and self._handlers.after_batch is not None:
            self._handlers.after_batch(unit)
        for d in dead:
            error = dead_letter if dead_letter is not None else (d.error or "")
            self._dead_letter(unit, d, error, now)
            outcomes.append((d.event_type, "dead_lettered"))
        if events:
            connection.execute(
                self._record,
                [
                    {
                        "consumer": self.group,
                        "event_id": e.event_id,
                        "event_type": e.type,
                        "received_at": now,
                    }
                    for e in events
                ],
            )
        write_outbox(
            connection, self._tables, unit.outgoing, owner=self._owner, now=now, lease=self._lease
        )
        delete_acked(connection, self._tables, acked)
        return BatchResult(
            outgoing=unit.outgoing,
            callbacks=unit.callbacks(),
            positions=positions,
            outcomes=outcomes,
            dead_lettered=dead,
        )

    def _fence(
        self,
        connection: Connection,
        deliveries: Sequence[Delivery],
        expected: Mapping[tuple[str, int], int | None],
        now: datetime,
    ) -> dict[tuple[str, int], int]:
        """Move each partition's position past the batch, only from where this member saw it.

        The moves go as one `executemany` (a batch spans many partitions; one statement each
        cost more than the rest of the transaction), in a fixed order so that two members
        moving the same rows on PostgreSQL wait for each other instead of deadlocking."""
        last: dict[tuple[str, int], int] = {}
        for d in deliveries:
            tp = (d.topic, d.partition)
            last[tp] = max(last.get(tp, -1), d.offset)
        self._report_gaps(first_offsets(deliveries), expected)
        fenced: set[tuple[str, int]] = set()
        moves: list[tuple[tuple[str, int], dict[str, Any]]] = []
        for tp in sorted(last):
            params = {"c": self.group, "t": tp[0], "p": tp[1], "next": last[tp] + 1, "now": now}
            before = expected.get(tp)
            if before is not None:
                moves.append((tp, {**params, "expected": before}))
                continue
            try:
                with connection.begin_nested():
                    connection.execute(self._first, params)
            except IntegrityError:
                fenced.add(tp)
        if moves:
            # One partition (the usual batch at low load): a plain execute, cheaper than many.
            arguments = moves[0][1] if len(moves) == 1 else [params for _tp, params in moves]
            moved = connection.execute(self._move, arguments).rowcount
            if moved != len(moves):
                fenced |= self._not_moved(connection, moves)
        if fenced:
            raise Fenced(fenced)
        return {tp: offset + 1 for tp, offset in last.items()}

    def _report_gaps(
        self, first: Mapping[tuple[str, int], int], expected: Mapping[tuple[str, int], int | None]
    ) -> None:
        """Offsets are contiguous here (no compaction, no transactions): a batch that starts
        past where its partition stands means records gone before they were read (retention).
        They cannot be handled any more; say so loudly rather than move on in silence."""
        for (topic, partition), offset in first.items():
            before = expected.get((topic, partition))
            if before is not None and offset > before:
                EVENTS_MISSED.labels(self._service, topic).inc(offset - before)
                log.error(
                    "%s: offsets %d..%d of %s:%d were never read (gone from Kafka)",
                    self._service,
                    before,
                    offset - 1,
                    topic,
                    partition,
                )

    def _not_moved(
        self, connection: Connection, moves: Sequence[tuple[tuple[str, int], dict[str, Any]]]
    ) -> set[tuple[str, int]]:
        """The partitions whose compare-and-set found another position (the batch rolls back,
        so which ones only matters for the log; if none can be told apart, all)."""
        positions = self._tables.positions
        stored = {
            (row.topic, row.partition): row.next_offset
            for row in connection.execute(
                select(positions.c.topic, positions.c.partition, positions.c.next_offset).where(
                    positions.c.consumer == self.group
                )
            )
        }
        found = {tp for tp, params in moves if stored.get(tp) != params["next"]}
        return found or {tp for tp, _params in moves}

    def _drop_duplicates(
        self,
        connection: Connection,
        deliveries: Sequence[Delivery],
        outcomes: list[tuple[str, str]],
    ) -> list[Delivery]:
        candidates = [d for d in deliveries if d.event is not None and d.skip is None]
        if not candidates:
            return []
        ids = sorted({d.event.event_id for d in candidates if d.event is not None})
        seen = set(connection.execute(self._seen, {"c": self.group, "ids": ids}).scalars())
        fresh = []
        for d in candidates:
            assert d.event is not None
            if d.event.event_id in seen:
                d.skip = "duplicate"
                continue
            seen.add(d.event.event_id)  # a second copy within the same batch
            fresh.append(d)
        return fresh

    def _dead_letter(self, unit: Unit, d: Delivery, error: str, now: datetime) -> None:
        unit.emit_raw(
            DEAD_LETTER_TOPIC,
            (d.key or b"").decode(errors="replace") or "-",
            d.value or b"",
            event_id=dead_letter_id(self.group, d.topic, d.partition, d.offset),
            headers=dead_letter_headers(
                group=self.group,
                topic=d.topic,
                partition=d.partition,
                offset=d.offset,
                error=error,
                at=now,
                event_id=d.event.event_id if d.event is not None else "",
                event_type=d.event.type if d.event is not None else "",
            ),
        )
