"""The runtime's own tables, added to each service's metadata (docs/architecture.md,
"The event runtime"):

* `inbox`: the event ids a consumer handled, written in the same transaction as the change
  they caused. It catches a second copy of an event at a *new* offset (an outbox row sent
  again after its sender died). Pruned after `inbox_retention_s`.
* `consumer_positions`: per partition, the offset of the next event to handle, moved in the
  same transaction as the batch it ends (compare-and-set: a batch commits only if nobody moved
  the position since it was read). It catches every redelivery of the *same* offset (a crash
  before the offset commit, a rebalance) without any row per event.
* `outbox`: events a transaction emits. Sent right after the commit by the process that wrote
  them (it holds a short lease on its rows); rows whose lease ran out are recovered by any
  instance. A row is deleted once the broker acknowledged it, so the table holds only what is
  in flight.
"""

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
)

# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
_Id = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class MessagingTables:
    inbox: Table
    outbox: Table
    positions: Table


def add_messaging_tables(metadata: MetaData) -> MessagingTables:
    inbox = Table(
        "inbox",
        metadata,
        Column("id", _Id, primary_key=True, autoincrement=True),
        Column("consumer", String(64), nullable=False),
        Column("event_id", String(64), nullable=False),
        Column("event_type", String(64), nullable=False),
        Column("received_at", DateTime(timezone=True), nullable=False, default=utcnow),
        UniqueConstraint("consumer", "event_id", name="uq_inbox_consumer_event"),
        Index("ix_inbox_received_at", "received_at"),
    )
    outbox = Table(
        "outbox",
        metadata,
        Column("id", _Id, primary_key=True, autoincrement=True),
        Column("topic", String(128), nullable=False),
        Column("key", String(128), nullable=False),
        Column("event_id", String(64), nullable=False),
        Column("payload", LargeBinary, nullable=False),
        # Kafka headers as `name=value` lines (dead letters carry their origin there).
        Column("headers", LargeBinary, nullable=True),
        Column("created_at", DateTime(timezone=True), nullable=False, default=utcnow),
        # The process that sends the row, until when; after that any instance may.
        Column("owner", String(64), nullable=False, default=""),
        Column("lease_until", DateTime(timezone=True), nullable=False),
        Index("ix_outbox_lease_until", "lease_until"),
    )
    positions = Table(
        "consumer_positions",
        metadata,
        Column("consumer", String(64), primary_key=True),
        Column("topic", String(128), primary_key=True),
        Column("partition", Integer, primary_key=True, autoincrement=False),
        Column("next_offset", BigInteger, nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False, default=utcnow),
    )
    return MessagingTables(inbox=inbox, outbox=outbox, positions=positions)
