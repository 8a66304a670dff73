"""Inbox and outbox tables (DESIGN.md principle 1), added to each service's own metadata.

The inbox records every consumed event id per consumer, in the same transaction as the change
the event caused, so a redelivered event is recognised and skipped. The outbox holds the events
a transaction emits; the relay publishes them after the commit.
"""

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
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
    )
    outbox = Table(
        "outbox",
        metadata,
        Column("id", _Id, primary_key=True, autoincrement=True),
        Column("topic", String(128), nullable=False),
        Column("key", String(128), nullable=False),
        Column("event_id", String(64), nullable=False, unique=True),
        Column("payload", LargeBinary, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False, default=utcnow),
        Column("published_at", DateTime(timezone=True), nullable=True, index=True),
    )
    return MessagingTables(inbox=inbox, outbox=outbox)
