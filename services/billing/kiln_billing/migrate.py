"""Billing's schema through Alembic (`migrations/`): the runtime runs `upgrade_connection` at
start, before anything else touches the database."""

from pathlib import Path

from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from kiln_runtime import migrations

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# The walking skeleton's schema, which billing made with create_all before it had migrations.
BASELINE = ("0001", "ledger_entries")
# Two billing processes starting at once on PostgreSQL take turns (pg_advisory_xact_lock).
MIGRATION_LOCK_KEY = 0x6B696C6E_0004  # "kiln", issue 4


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


def current_revision(connection: Connection) -> str | None:
    return migrations.current_revision(connection)


def head_revision() -> str | None:
    return migrations.head_revision(MIGRATIONS_DIR)


async def upgrade_database(engine: AsyncEngine, revision: str = "head") -> None:
    """`upgrade_connection` on an async engine (tests and tools that hold one)."""
    async with engine.begin() as connection:
        await connection.run_sync(upgrade_connection, revision)


async def database_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as connection:
        return await connection.run_sync(current_revision)


def main() -> int:
    """`python -m kiln_billing.migrate`: the newest schema on KILN_DATABASE_URL."""
    from kiln_billing.config import BillingSettings
    from kiln_runtime.migrations import command_line

    return command_line(upgrade_connection, BillingSettings().database_url)


if __name__ == "__main__":
    raise SystemExit(main())
