"""Alembic operations on the runtime's own tables, for each service's migrations to call (the
tables live in every service's database; messaging.py defines them).

Like the migrations that call them, these functions are frozen once released: a later change
of the runtime's tables gets a function of its own, never an edit of these.

`to_batch_runtime` goes from the first runtime's tables (an outbox marked `published_at`, an
inbox without an index on time) to the batch-first runtime's (leased outbox rows, deleted once
sent; the inbox pruned by time; per-partition consumer positions).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import sqlalchemy as sa
from alembic import context, op

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_When = sa.DateTime(timezone=True)
# Rows carried over are leased to nobody: the first instance that starts sends them.
_EXPIRED = "1970-01-01 00:00:00"


def _outbox(name: str) -> None:
    op.create_table(
        name,
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("topic", sa.String(128), nullable=False),
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("headers", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", _When, nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("lease_until", _When, nullable=False),
    )


def create_runtime_tables() -> None:
    """The runtime's tables for a service whose first migration comes after it."""
    op.create_table(
        "inbox",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("consumer", sa.String(64), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("received_at", _When, nullable=False),
        sa.UniqueConstraint("consumer", "event_id", name="uq_inbox_consumer_event"),
    )
    op.create_index("ix_inbox_received_at", "inbox", ["received_at"])
    _outbox("outbox")
    op.create_index("ix_outbox_lease_until", "outbox", ["lease_until"])
    _positions()


def _positions() -> None:
    op.create_table(
        "consumer_positions",
        sa.Column("consumer", sa.String(64), nullable=False),
        sa.Column("topic", sa.String(128), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("next_offset", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", _When, nullable=False),
        sa.PrimaryKeyConstraint("consumer", "topic", "partition"),
    )


def to_batch_runtime() -> None:
    _outbox("outbox_next")
    op.execute(
        "INSERT INTO outbox_next (topic, key, event_id, payload, headers, created_at, owner, "
        f"lease_until) SELECT topic, key, event_id, payload, NULL, created_at, '', '{_EXPIRED}' "
        "FROM outbox WHERE published_at IS NULL ORDER BY id"
    )
    op.drop_index("ix_outbox_published_at", table_name="outbox")
    op.drop_table("outbox")
    op.rename_table("outbox_next", "outbox")
    op.create_index("ix_outbox_lease_until", "outbox", ["lease_until"])
    op.create_index("ix_inbox_received_at", "inbox", ["received_at"])
    _positions()


def from_batch_runtime() -> None:
    op.drop_table("consumer_positions")
    op.drop_index("ix_inbox_received_at", table_name="inbox")
    op.create_table(
        "outbox_previous",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("topic", sa.String(128), nullable=False),
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False, unique=True),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", _When, nullable=False),
        sa.Column("published_at", _When, nullable=True),
    )
    op.execute(
        "INSERT INTO outbox_previous (topic, key, event_id, payload, created_at) "
        "SELECT topic, key, event_id, payload, created_at FROM outbox "
        "WHERE headers IS NULL ORDER BY id"
    )
    op.drop_index("ix_outbox_lease_until", table_name="outbox")
    op.drop_table("outbox")
    op.rename_table("outbox_previous", "outbox")
    op.create_index("ix_outbox_published_at", "outbox", ["published_at"])


# --- sealing secrets in place (the migrations that sealed the webhook secrets) ---------------

_SEAL_PAGE = 500
K = TypeVar("K")


def lazy_keyring(open_keyring: Callable[[str], K]) -> Callable[[], K]:
    """The operator's keyring, looked for at the first row that needs it: the one the process
    running the migration passed (`config.attributes["secrets_keyring"]`: the service at start,
    with its settings), else `open_keyring(KILN_SECRETS_KEYS)` (Alembic's command line)."""
    found: list[K] = []

    def get() -> K:
        if not found:
            given = context.config.attributes.get("secrets_keyring")
            found.append(
                given
                if given is not None
                else open_keyring(os.environ.get("KILN_SECRETS_KEYS", ""))
            )
        return found[0]

    return get


def move_values(
    table: sa.TableClause, id_name: str, source: str, target: str, change: Callable[[str], str]
) -> None:
    """Each row with a non-empty `source`: `target` = change(source), `source` emptied. Pages
    by id, so that a large table is not read at once."""
    bind = op.get_bind()
    id_column, source_column = table.c[id_name], table.c[source]
    after = ""
    while True:
        rows = bind.execute(
            sa.select(id_column, source_column)
            .where(source_column.is_not(None), source_column != "", id_column > after)
            .order_by(id_column)
            .limit(_SEAL_PAGE)
        ).all()
        for row in rows:
            bind.execute(
                table.update()
                .where(id_column == row[0])
                .values({target: change(row[1]), source: ""})
            )
        if len(rows) < _SEAL_PAGE:
            return
        after = rows[-1][0]
