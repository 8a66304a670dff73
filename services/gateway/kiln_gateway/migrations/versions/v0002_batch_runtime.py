"""The batch-first event runtime's tables (leased outbox rows, inbox pruned by time, consumer
positions), and the job an Idempotency-Key made, written with it (docs/architecture.md).

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
    with op.batch_alter_table("idempotency_records") as batch:
        batch.add_column(sa.Column("job_id", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("idempotency_records") as batch:
        batch.drop_column("job_id")
    from_batch_runtime()
