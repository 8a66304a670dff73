"""The notifier's schema through Alembic (`migrations/`): the runtime runs
`upgrade_connection` at start, before anything else touches the database."""

from pathlib import Path

from sqlalchemy import Connection

from kiln_runtime import migrations

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# A database the notifier made with create_all before it had migrations.
BASELINE = ("0001", "deliveries")
MIGRATION_LOCK_KEY = 0x6B696C6E_0006  # "kiln", the notifier


def upgrade_connection(connection: Connection, revision: str = "head") -> None:
    migrations.upgrade(
        connection,
        MIGRATIONS_DIR,
        lock_key=MIGRATION_LOCK_KEY,
        revision=revision,
        baseline=BASELINE,
    )


def downgrade_connection(connection: Connection, revision: str) -> None:
    migrations.downgrade(connection, MIGRATIONS_DIR, revision)
