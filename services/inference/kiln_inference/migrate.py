"""The inference worker's schema through Alembic (`migrations/`): the runtime runs
`upgrade_connection` at start, before anything else touches the database."""

from pathlib import Path

from sqlalchemy import Connection

from kiln_runtime import migrations

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# A database the worker made with create_all before it had migrations.
BASELINE = ("0001", "work_items")
MIGRATION_LOCK_KEY = 0x6B696C6E_0007  # "kiln", the inference worker


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


def main() -> int:
    """`python -m kiln_inference.migrate`: the newest schema on KILN_DATABASE_URL."""
    from kiln_inference.config import InferenceSettings
    from kiln_runtime.migrations import command_line

    return command_line(upgrade_connection, InferenceSettings().database_url)


if __name__ == "__main__":
    raise SystemExit(main())
