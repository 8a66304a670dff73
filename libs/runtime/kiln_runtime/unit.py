"""The unit of work a handler runs in: one open transaction, the batch's clock reading, the
events it emits (written to the outbox in that transaction) and what to do after the commit.

Handlers are plain functions `handle_<event>(unit, event)`; they know nothing of Kafka.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from google.protobuf.message import Message
from sqlalchemy import Connection, insert

from kiln_contracts import Event, encode, new_event, topic_of
from kiln_contracts.v1.envelope_pb2 import Envelope
from kiln_runtime.messaging import MessagingTables

# Event ids derived from the event that caused them are stable: if a transaction is lost after
# its events went out (a power loss under SQLite's synchronous=NORMAL) and runs again, the new
# copies carry the same ids and consumers drop them (docs/architecture.md, "Exactly once").
_EVENT_ID_NAMESPACE = uuid.UUID("6b696c6e-0000-4000-8000-6576656e7473")


@dataclass
class OutgoingEvent:
    """One outbox row to be: an event (or a dead letter) and where it goes."""

    topic: str
    key: str
    event_id: str
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()
    row_id: int | None = None  # the outbox row's id once written
    event_type: str = ""  # for metrics; empty for a dead letter or a row read back

    @property
    def label(self) -> str:
        """The event type as metrics name it: the topic when the row does not say."""
        return self.event_type or self.topic

    def header_blob(self) -> bytes | None:
        if not self.headers:
            return None
        return b"\n".join(
            name.encode() + b"=" + value.hex().encode() for name, value in self.headers
        )


def headers_from_blob(blob: bytes | None) -> list[tuple[str, bytes]]:
    if not blob:
        return []
    pairs = []
    for line in blob.split(b"\n"):
        name, _, value = line.partition(b"=")
        pairs.append((name.decode(), bytes.fromhex(value.decode())))
    return pairs


@dataclass
class Unit:
    """What one handler call (or one batch, or one group-committed write) works with."""

    connection: Connection
    now: datetime
    service: str
    cause: Event | None = None  # the event being handled; its trace id carries over
    outgoing: list[OutgoingEvent] = field(default_factory=list)
    _after_commit: list[Callable[[], None]] = field(default_factory=list)
    _on_rollback: list[Callable[[], None]] = field(default_factory=list)
    _derived: dict[tuple[str, str, str, str], int] = field(default_factory=dict)

    def emit(
        self,
        event_type: str,
        message: Message,
        *,
        account_id: str,
        job_id: str = "",
        trace_id: str | None = None,
    ) -> Envelope:
        """Emit an event: written to the outbox with this unit's changes, sent after commit."""
        envelope = new_event(
            event_type,
            message,
            account_id=account_id,
            job_id=job_id,
            trace_id=trace_id if trace_id is not None else self._trace_id(),
            event_id=self._event_id(event_type, job_id),
            occurred_at=self.now,
        )
        self.outgoing.append(
            OutgoingEvent(
                topic=topic_of(event_type),
                key=account_id,
                event_id=envelope.event_id,
                value=encode(envelope),
                event_type=event_type,
            )
        )
        return envelope

    def emit_raw(
        self,
        topic: str,
        key: str,
        value: bytes,
        *,
        event_id: str,
        headers: Mapping[str, bytes] | None = None,
    ) -> None:
        """Send bytes as they are (a dead letter, a replay) through the outbox."""
        self.outgoing.append(
            OutgoingEvent(
                topic=topic,
                key=key,
                event_id=event_id,
                value=value,
                headers=tuple((headers or {}).items()),
            )
        )

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` on the event loop once this unit's transaction committed."""
        self._after_commit.append(callback)

    def _trace_id(self) -> str:
        return self.cause.envelope.trace_id if self.cause is not None else ""

    def _event_id(self, event_type: str, job_id: str) -> str | None:
        if self.cause is None:
            return None  # a fresh UUID
        key = (self.cause.event_id, self.service, event_type, job_id)
        seq = self._derived.get(key, 0)
        self._derived[key] = seq + 1
        return str(uuid.uuid5(_EVENT_ID_NAMESPACE, "/".join((*key, str(seq)))))

    def callbacks(self) -> list[Callable[[], None]]:
        return list(self._after_commit)

    def on_rollback(self, callback: Callable[[], None]) -> None:
        """Run `callback` if this unit's work rolls back (its savepoint, or the whole shared
        transaction before a retry): undo what the work changed in memory."""
        self._on_rollback.append(callback)

    def rolled_back(self) -> None:
        callbacks, self._on_rollback = self._on_rollback, []
        for callback in callbacks:
            callback()


def write_outbox(
    connection: Connection,
    tables: MessagingTables,
    outgoing: list[OutgoingEvent],
    *,
    owner: str,
    now: datetime,
    lease: timedelta,
) -> None:
    """Insert the rows and remember their ids (the publisher deletes them by id once sent)."""
    if not outgoing:
        return
    outbox = tables.outbox
    lease_until = now + lease
    rows: list[dict[str, Any]] = [
        {
            "topic": item.topic,
            "key": item.key,
            "event_id": item.event_id,
            "payload": item.value,
            "headers": item.header_blob(),
            "created_at": now,
            "owner": owner,
            "lease_until": lease_until,
        }
        for item in outgoing
    ]
    # RETURNING with executemany ("insertmanyvalues"): one statement, the ids in order.
    result = connection.execute(
        insert(outbox).returning(outbox.c.id, sort_by_parameter_order=True), rows
    )
    for item, row_id in zip(outgoing, result.scalars().all(), strict=True):
        item.row_id = row_id
