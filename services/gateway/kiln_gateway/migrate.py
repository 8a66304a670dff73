"""The gateway's schema through Alembic: `upgrade_database(engine)` runs at start (the runtime's
`migrate` hook) instead of `create_all`."""

from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# The schema the gateway made with create_all before it had migrations.
BASELINE_REVISION = "0001"
# The columns `create_all` could not add to an existing `jobs` table; the gateway's start added
# them (issue 5) until it had migrations. A database without them was never started by it since.
_JOBS_COLUMNS_ADDED_LATER = ("estimated_start_at", "queue_reason")
# Two gateway processes starting at once on PostgreSQL take turns (pg_advisory_xact_lock).
_MIGRATION_LOCK_KEY = 0x6B696C6E_0011  # "kiln", issue 11
# The alembic config attribute under which a migration finds the operator's keyring (0004
# seals webhook secrets with it); without it, migrations read KILN_SECRETS_KEYS themselves.
KEYRING_ATTRIBUTE = "secrets_keyring"

if TYPE_CHECKING:
    from kiln_crypto import SecretsKeyring


class UnknownSchema(RuntimeError):
    """A database without migrations whose tables are not the baseline's."""


def alembic_config(
    connection: Connection | None = None, keyring: "SecretsKeyring | None" = None
) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    if keyring is not None:
        config.attributes[KEYRING_ATTRIBUTE] = keyring
    return config


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _adopt_unmigrated(connection: Connection, config: Config) -> None:
    """A database made by `create_all` (no `alembic_version`): stamp it with the baseline, whose
    schema it has once the gateway started on it with the issue-5 columns."""
    columns = {column["name"] for column in inspect(connection).get_columns("jobs")}
    missing = [name for name in _JOBS_COLUMNS_ADDED_LATER if name not in columns]
    if missing:
        raise UnknownSchema(
            "The gateway's database has tables but no migration history, and its `jobs` table "
            f"lacks {', '.join(missing)}: it predates the schema of revision "
            f"{BASELINE_REVISION}. Start the previous release on it once, or start afresh."
        )
    command.stamp(config, BASELINE_REVISION)


def upgrade_connection(
    connection: Connection, revision: str = "head", *, keyring: "SecretsKeyring | None" = None
) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
    config = alembic_config(connection, keyring)
    tables = set(inspect(connection).get_table_names())
    if "alembic_version" not in tables and "jobs" in tables:
        _adopt_unmigrated(connection, config)
    command.upgrade(config, revision)


def downgrade_connection(
    connection: Connection, revision: str, *, keyring: "SecretsKeyring | None" = None
) -> None:
    command.downgrade(alembic_config(connection, keyring), revision)


async def upgrade_database(
    engine: AsyncEngine, revision: str = "head", *, keyring: "SecretsKeyring | None" = None
) -> None:
    """Bring the database to `revision` (all of the gateway's tables, inbox and outbox
    included)."""
    async with engine.begin() as connection:
        await connection.run_sync(lambda sync: upgrade_connection(sync, revision, keyring=keyring))


def main() -> int:
    """`python -m kiln_gateway.migrate`: the newest schema on KILN_DATABASE_URL (with
    KILN_SECRETS_KEYS to seal the clear webhook secrets of a database of an earlier release)."""
    from kiln_gateway.config import GatewaySettings
    from kiln_runtime.migrations import command_line

    # Without a keyring attribute, a migration that needs one reads KILN_SECRETS_KEYS itself.
    return command_line(upgrade_connection, GatewaySettings().database_url)


if __name__ == "__main__":
    raise SystemExit(main())
