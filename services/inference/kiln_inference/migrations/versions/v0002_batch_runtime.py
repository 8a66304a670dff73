"""The batch-first event runtime's tables: leased outbox rows, inbox pruned by time,
per-partition consumer positions (docs/architecture.md, "The event runtime").

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05
"""

from collections.abc import Sequence

from kiln_runtime.migration_ops import from_batch_runtime, to_batch_runtime

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    to_batch_runtime()


def downgrade() -> None:
    from_batch_runtime()
