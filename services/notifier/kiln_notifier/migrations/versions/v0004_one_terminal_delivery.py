"""One terminal delivery per job and target, held by the database: a partial unique index on
`deliveries (job_id, endpoint_id)` over the terminal webhook types (tables.py says why).

A database that already holds two terminal deliveries of one job to one target (two members
recorded a job's ends at once before this index) cannot take the index: the upgrade stops and
names them, and the operator decides which row to keep (docs/deploy.md, "Upgrading to one
terminal webhook per job").

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The terminal webhook types as this revision knows them (not imported: a migration must keep
# meaning what it meant when it was written).
_TERMINAL = "event_type IN ('job.canceled', 'job.completed', 'job.failed')"
_INDEX = "uq_deliveries_job_terminal"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # Writers wait from here on, not only while the index is built: a duplicate committed
        # between the check and the build would fail it without the message below.
        op.execute("LOCK TABLE deliveries IN SHARE MODE")
    twice = (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT job_id, endpoint_id, COUNT(*) AS n FROM deliveries "
                f"WHERE {_TERMINAL} GROUP BY job_id, endpoint_id HAVING COUNT(*) > 1"
            )
        )
        .all()
    )
    if twice:
        listed = ", ".join(
            f"{row.job_id} → {row.endpoint_id or 'webhook_url'}" for row in twice[:10]
        ) + (", …" if len(twice) > 10 else "")
        raise RuntimeError(
            f"{len(twice)} job(s) have two terminal deliveries to one target ({listed}); "
            "delete the later row of each from `deliveries` (and its rows in "
            "`delivery_attempts` and `redeliveries`) and start the notifier again"
        )
    op.create_index(
        _INDEX,
        "deliveries",
        ["job_id", "endpoint_id"],
        unique=True,
        sqlite_where=sa.text(_TERMINAL),
        postgresql_where=sa.text(_TERMINAL),
    )


def downgrade() -> None:
    op.drop_index(_INDEX, table_name="deliveries")
