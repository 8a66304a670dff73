"""The batch-first event runtime's tables, and pool slots instead of the write lock: the
scheduler keeps its queue in memory (rebuilt from `queued_jobs`) and no longer serialises
every event on one row; `pool_slots` counts each pool's jobs in flight across instances.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from kiln_runtime.migration_ops import from_batch_runtime, to_batch_runtime

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    to_batch_runtime()
    op.create_table(
        "pool_slots",
        sa.Column("pool", sa.String(64), primary_key=True),
        sa.Column("in_flight", sa.Integer(), nullable=False),
    )
    op.execute(
        "INSERT INTO pool_slots (pool, in_flight) SELECT pool, count(*) FROM queued_jobs "
        "WHERE status IN ('dispatched', 'running', 'canceling') GROUP BY pool"
    )
    op.execute("DELETE FROM pool_stats WHERE pool = '*'")  # the old write lock


def downgrade() -> None:
    op.drop_table("pool_slots")
    op.execute("INSERT INTO pool_stats (pool, mean_duration_s, samples) VALUES ('*', NULL, 0)")
    from_batch_runtime()
