"""The notifier's schema before it had migrations (made by `create_all`): its copy of the
endpoints, deliveries and their attempts, disabled endpoints, redeliveries, and the first
runtime's inbox and outbox.

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
        "endpoints",
        sa.Column("endpoint_id", sa.String(64), primary_key=True),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("secret", sa.String(256), nullable=False),
        sa.Column("event_types", sa.JSON(), nullable=False),
        sa.Column("is_default", sa.Boolean(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("changed_at", _When, nullable=False),
    )
    op.create_index("ix_endpoints_account_id", "endpoints", ["account_id"])
    op.create_table(
        "deliveries",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("webhook_id", sa.String(64), nullable=False),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("endpoint_id", sa.String(64), nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", _When, nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("trace_id", sa.String(64), nullable=False),
        sa.Column("created_at", _When, nullable=False),
        sa.Column("finished_at", _When, nullable=True),
        sa.UniqueConstraint("webhook_id", "endpoint_id", name="uq_deliveries_message_endpoint"),
    )
    op.create_index("ix_deliveries_due", "deliveries", ["status", "next_attempt_at"])
    op.create_index("ix_deliveries_account_created", "deliveries", ["account_id", "created_at"])
    op.create_index("ix_deliveries_job", "deliveries", ["job_id"])
    op.create_table(
        "delivery_attempts",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("delivery_id", sa.String(64), sa.ForeignKey("deliveries.id"), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("attempted_at", _When, nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.UniqueConstraint("delivery_id", "attempt", name="uq_delivery_attempts_attempt"),
    )
    op.create_table(
        "disabled_endpoints",
        sa.Column("endpoint_id", sa.String(64), primary_key=True),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("disabled_at", _When, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
    )
    op.create_table(
        "redeliveries",
        sa.Column("delivery_id", sa.String(64), primary_key=True),
        sa.Column("attempt_base", sa.Integer(), nullable=False),
        sa.Column("requested_at", _When, nullable=False),
    )
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
    op.drop_table("redeliveries")
    op.drop_table("disabled_endpoints")
    op.drop_table("delivery_attempts")
    op.drop_index("ix_deliveries_job", table_name="deliveries")
    op.drop_index("ix_deliveries_account_created", table_name="deliveries")
    op.drop_index("ix_deliveries_due", table_name="deliveries")
    op.drop_table("deliveries")
    op.drop_index("ix_endpoints_account_id", table_name="endpoints")
    op.drop_table("endpoints")
