"""The scheduler's schema through Alembic (`migrations/`): the runtime runs
`upgrade_connection` at start, before anything else touches the database."""

from pathlib import Path

from sqlalchemy import Connection, inspect, text

from kiln_runtime import migrations
from kiln_scheduler.tables import QueuedJob

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
BASELINE = ("0001", "queued_jobs")
MIGRATION_LOCK_KEY = 0x6B696C6E_0005  # "kiln", the scheduler
# The columns of `queued_jobs` at the baseline: the adoption adds only those (a later
# migration adds its own, and would fail on a column already there).
_BASELINE_COLUMNS = frozenset(
    {
        "seq",
        "job_id",
        "account_id",
        "pool",
        "spec",
        "price_millicredits",
        "status",
        "attempt",
        "enqueued_at",
        "dispatched_at",
        "finished_at",
        "deadline_at",
        "ready_at",
        "started_at",
        "last_seen_at",
        "queue_position",
        "queue_reason",
        "last_error_code",
        "outcome",
    }
)


def _add_missing_columns(connection: Connection) -> None:
    """A queue made before migrations may lack the columns added since (all nullable); the
    baseline revision has them, so they are added before it is stamped."""
    tables = set(inspect(connection).get_table_names())
    if "alembic_version" in tables or "queued_jobs" not in tables:
        return
    present = {c["name"] for c in inspect(connection).get_columns("queued_jobs")}
    for column in QueuedJob.__table__.columns:
        if column.name not in present and column.name in _BASELINE_COLUMNS:
            sql_type = column.type.compile(dialect=connection.dialect)
            connection.execute(text(f"ALTER TABLE queued_jobs ADD COLUMN {column.name} {sql_type}"))


def upgrade_connection(connection: Connection, revision: str = "head") -> None:
    _add_missing_columns(connection)
    migrations.upgrade(
        connection,
        MIGRATIONS_DIR,
        lock_key=MIGRATION_LOCK_KEY,
        revision=revision,
        baseline=BASELINE,
    )


def downgrade_connection(connection: Connection, revision: str) -> None:
    migrations.downgrade(connection, MIGRATIONS_DIR, revision)


def current_revision(connection: Connection) -> str | None:
    return migrations.current_revision(connection)


def main() -> int:
    """`python -m kiln_scheduler.migrate`: the newest schema on KILN_DATABASE_URL."""
    from kiln_runtime.migrations import command_line
    from kiln_scheduler.config import SchedulerSettings

    return command_line(upgrade_connection, SchedulerSettings().database_url)


if __name__ == "__main__":
    raise SystemExit(main())
