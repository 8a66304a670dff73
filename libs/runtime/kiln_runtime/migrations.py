"""Each service's schema through Alembic (its `migrations/` folder), run at start by the
runtime before anything else touches the database."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, MetaData, inspect, text

Migrate = Callable[[Connection], None]


def alembic_config(
    migrations_dir: Path,
    connection: Connection | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> Config:
    """`attributes` reach the migrations as `context.config.attributes` (the notifier's hand
    over the operator's keyring that way, to seal stored secrets)."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir))
    if connection is not None:
        config.attributes["connection"] = connection
    config.attributes.update(attributes or {})
    return config


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def head_revision(migrations_dir: Path) -> str | None:
    return ScriptDirectory.from_config(alembic_config(migrations_dir)).get_current_head()


def upgrade(
    connection: Connection,
    migrations_dir: Path,
    *,
    lock_key: int,
    revision: str = "head",
    baseline: tuple[str, str] | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> None:
    """Bring the schema to `revision`. Two processes starting at once on PostgreSQL take
    turns (an advisory lock); SQLite serialises them itself. `baseline` = (revision, table):
    a database that has `table` but no Alembic version was made before migrations existed and
    is stamped at that revision first."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key})
    config = alembic_config(migrations_dir, connection, attributes)
    if baseline is not None:
        tables = set(inspect(connection).get_table_names())
        if "alembic_version" not in tables and baseline[1] in tables:
            command.stamp(config, baseline[0])
    command.upgrade(config, revision)


def downgrade(
    connection: Connection,
    migrations_dir: Path,
    revision: str,
    attributes: Mapping[str, Any] | None = None,
) -> None:
    command.downgrade(alembic_config(migrations_dir, connection, attributes), revision)


def run_env(metadata: MetaData, default_url: Callable[[], str]) -> None:
    """The body of every service's `migrations/env.py`: migrate the connection the runtime hands
    over, or (from the `alembic` command line) the database of `sqlalchemy.url`, else the
    service's own setting (KILN_DATABASE_URL)."""
    from alembic import context

    from kiln_runtime.db import make_sync_engine

    config = context.config

    def run_migrations(connection: Connection) -> None:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            # SQLite alters a table by copying it; Alembic's batch mode does that.
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()

    given: Connection | None = config.attributes.get("connection")
    url = config.get_main_option("sqlalchemy.url") or ""
    if given is not None:
        run_migrations(given)
    elif context.is_offline_mode():
        context.configure(url=url or default_url(), target_metadata=metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
    else:
        engine = make_sync_engine(url or default_url())
        try:
            with engine.begin() as connection:
                run_migrations(connection)
        finally:
            engine.dispose()


def command_line(upgrade: Migrate, database_url: str) -> int:
    """`python -m kiln_<service>.migrate`: bring the service's database to its newest schema
    (the Kubernetes migration Jobs run this before a release's services roll)."""
    from kiln_runtime.db import make_sync_engine

    engine = make_sync_engine(database_url)
    try:
        with engine.connect() as connection:
            from kiln_runtime.db import WRITE_INTENT

            connection.info[WRITE_INTENT] = True
            with connection.begin():
                upgrade(connection)
            revision = current_revision(connection)
    finally:
        engine.dispose()
    print(f"schema at revision {revision}")
    return 0
