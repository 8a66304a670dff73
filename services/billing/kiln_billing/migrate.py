"""Billing's schema through Alembic: `upgrade_database(engine)` runs at start (the runtime's
`migrate` hook) instead of `create_all`."""

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# The walking skeleton's schema, which billing made with create_all before it had migrations.
BASELINE_REVISION = "0001"
# Two billing processes starting at once on PostgreSQL take turns (pg_advisory_xact_lock).
_MIGRATION_LOCK_KEY = 0x6B696C6E_0004  # "kiln", issue 4


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def database_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as connection:
        return await connection.run_sync(current_revision)


def upgrade_connection(connection: Connection, revision: str = "head") -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
    config = alembic_config(connection)
    tables = set(inspect(connection).get_table_names())
    if "alembic_version" not in tables and "ledger_entries" in tables:
        command.stamp(config, BASELINE_REVISION)  # made by create_all before migrations
    command.upgrade(config, revision)


def downgrade_connection(connection: Connection, revision: str) -> None:
    command.downgrade(alembic_config(connection), revision)


async def upgrade_database(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the database to `revision` (all of billing's tables, inbox and outbox included)."""
    async with engine.begin() as connection:
        await connection.run_sync(upgrade_connection, revision)
