"""The walking skeleton's schema: single-entry ledger, reservations, balances, inbox, outbox.

Revision ID: 0001
Revises:
Create Date: 2026-05-20

A database that billing made with `create_all` before it had migrations has exactly this
schema; `kiln_billing.migrate` stamps it with this revision and upgrades it from here.
Migrations are frozen: they never import the models or the runtime's table helpers.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_When = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "inbox",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("consumer", sa.String(64), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("received_at", _When, nullable=False),
        sa.UniqueConstraint("consumer", "event_id", name="uq_inbox_consumer_event"),
    )
    op.create_table(
        "outbox",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("topic", sa.String(128), nullable=False),
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False, unique=True),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", _When, nullable=False),
        sa.Column("published_at", _When, nullable=True),
    )
    op.create_index("ix_outbox_published_at", "outbox", ["published_at"])
    op.create_table(
        "ledger_entries",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("entry_key", sa.String(160), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=True),
        sa.Column("amount_millicredits", sa.BigInteger(), nullable=False),
        sa.Column("sandbox", sa.Boolean(), nullable=False),
        sa.Column("created_at", _When, nullable=False),
        sa.UniqueConstraint("account_id", "entry_key", name="uq_ledger_entry_key"),
    )
    op.create_index("ix_ledger_entries_account_id", "ledger_entries", ["account_id"])
    op.create_index("ix_ledger_entries_job_id", "ledger_entries", ["job_id"])
    op.create_table(
        "reservations",
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("amount_millicredits", sa.BigInteger(), nullable=False),
        sa.Column("sandbox", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", _When, nullable=False),
        sa.Column("settled_at", _When, nullable=True),
    )
    op.create_index("ix_reservations_account_id", "reservations", ["account_id"])
    op.create_table(
        "account_balances",
        sa.Column("account_id", sa.String(64), primary_key=True),
        sa.Column("granted_millicredits", sa.BigInteger(), nullable=False),
        sa.Column("available_millicredits", sa.BigInteger(), nullable=False),
        sa.Column("reserved_millicredits", sa.BigInteger(), nullable=False),
        sa.Column("captured_millicredits", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("account_balances")
    op.drop_index("ix_reservations_account_id", table_name="reservations")
    op.drop_table("reservations")
    op.drop_index("ix_ledger_entries_job_id", table_name="ledger_entries")
    op.drop_index("ix_ledger_entries_account_id", table_name="ledger_entries")
    op.drop_table("ledger_entries")
    op.drop_index("ix_outbox_published_at", table_name="outbox")
    op.drop_table("outbox")
    op.drop_table("inbox")
