"""The scheduler's schema before it had migrations (made by `create_all`, columns added by hand):
the durable queue, per-pool durations, the first runtime's inbox and outbox.

Revision ID: 0001
Revises:
Create Date: 2026-12-05
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
        "queued_jobs",
        sa.Column("seq", _Id, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(64), nullable=False, unique=True),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("pool", sa.String(64), nullable=False),
        sa.Column("spec", sa.LargeBinary(), nullable=False),
        sa.Column("price_millicredits", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("enqueued_at", _When, nullable=False),
        sa.Column("dispatched_at", _When, nullable=True),
        sa.Column("finished_at", _When, nullable=True),
        sa.Column("deadline_at", _When, nullable=True),
        sa.Column("ready_at", _When, nullable=True),
        sa.Column("started_at", _When, nullable=True),
        sa.Column("last_seen_at", _When, nullable=True),
        sa.Column("queue_position", sa.Integer(), nullable=True),
        sa.Column("queue_reason", sa.String(32), nullable=True),
        sa.Column("last_error_code", sa.String(64), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=True),
    )
    op.create_index("ix_queued_jobs_account_id", "queued_jobs", ["account_id"])
    op.create_index("ix_queued_jobs_pool", "queued_jobs", ["pool"])
    op.create_index("ix_queued_jobs_status", "queued_jobs", ["status"])
    op.create_table(
        "pool_stats",
        sa.Column("pool", sa.String(64), primary_key=True),
        sa.Column("mean_duration_s", sa.Float(), nullable=True),
        sa.Column("samples", sa.Integer(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("pool_stats")
    op.drop_index("ix_queued_jobs_status", table_name="queued_jobs")
    op.drop_index("ix_queued_jobs_pool", table_name="queued_jobs")
    op.drop_index("ix_queued_jobs_account_id", table_name="queued_jobs")
    op.drop_table("queued_jobs")
    op.drop_index("ix_outbox_published_at", table_name="outbox")
    op.drop_table("outbox")
    op.drop_table("inbox")
