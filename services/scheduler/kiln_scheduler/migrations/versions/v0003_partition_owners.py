"""Which scheduler instance took each partition last: an instance's timer acts only on the
partitions it still owns, so one cut off from the group leaves their jobs to the instance
the group gave them to.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "partition_owners",
        sa.Column("partition", sa.Integer(), autoincrement=False, primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("partition_owners")
