"""The worker's schema before it had migrations (made by `create_all`): accepted work items,
cancels seen, stored results, and the first runtime's inbox and outbox.

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
        "work_items",
        sa.Column("id", sa.String(96), primary_key=True),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("dispatch", sa.LargeBinary(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("accepted_at", _When, nullable=False),
    )
    op.create_index("ix_work_items_job_id", "work_items", ["job_id"])
    op.create_index("ix_work_items_status", "work_items", ["status"])
    op.create_table(
        "canceled_jobs",
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("canceled_at", _When, nullable=False),
    )
    op.create_index("ix_canceled_jobs_canceled_at", "canceled_jobs", ["canceled_at"])
    op.create_table(
        "stored_results",
        sa.Column("blob_key", sa.String(200), primary_key=True),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("stored_at", _When, nullable=False),
    )
    op.create_index("ix_stored_results_stored_at", "stored_results", ["stored_at"])
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


def downgrade() -> None:
    op.drop_index("ix_outbox_published_at", table_name="outbox")
    op.drop_table("outbox")
    op.drop_table("inbox")
    op.drop_index("ix_stored_results_stored_at", table_name="stored_results")
    op.drop_table("stored_results")
    op.drop_index("ix_canceled_jobs_canceled_at", table_name="canceled_jobs")
    op.drop_table("canceled_jobs")
    op.drop_index("ix_work_items_status", table_name="work_items")
    op.drop_index("ix_work_items_job_id", table_name="work_items")
    op.drop_table("work_items")
