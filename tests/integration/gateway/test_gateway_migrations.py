"""The gateway's schema comes from its Alembic migrations, on SQLite and PostgreSQL: they build
exactly the tables of `tables.py` (inbox and outbox included), a second start finds nothing to
do, a database the gateway made with `create_all` before it had migrations is adopted with its
rows, and the migrations go down and up again."""

from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from kiln_crypto import SecretsKeyring, new_secrets_key
from kiln_gateway.migrate import (
    UnknownSchema,
    current_revision,
    downgrade_connection,
    head_revision,
    upgrade_database,
)
from kiln_gateway.tables import Base
from kiln_runtime.db import make_engine
from tests.integration.billing.postgres_cluster import PostgresCluster
from tests.integration.schema_support import schema_differences

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each backend."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/gateway.db"
    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
    return cluster.new_database("gateway")


def table_names(connection: Connection) -> set[str]:
    return set(sa.inspect(connection).get_table_names())


async def test_the_migrations_build_exactly_the_tables(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        await upgrade_database(engine)
        await upgrade_database(engine)  # a second start finds nothing to do
        async with engine.connect() as connection:
            assert await connection.run_sync(current_revision) == head_revision()
            assert await connection.run_sync(schema_differences, Base.metadata) == []
            tables = await connection.run_sync(table_names)
        assert set(Base.metadata.tables) | {"alembic_version"} == tables
    finally:
        await engine.dispose()


async def test_a_database_made_before_migrations_is_adopted_with_its_rows(
    database_url: str,
) -> None:
    engine = make_engine(database_url)
    accounts = Base.metadata.tables["accounts"]
    try:
        # What the gateway's start made with create_all until it had migrations: revision
        # 0001's schema without a migration history.
        await upgrade_database(engine, "0001")
        async with engine.begin() as connection:
            await connection.execute(sa.text("DROP TABLE alembic_version"))
            await connection.execute(
                accounts.insert().values(
                    id="acct_1",
                    email="ada@example.com",
                    name="Ada",
                    password_hash="x",
                    default_webhook_secret="whsec_x",
                    suspended=False,
                    created_at=datetime.now(UTC),
                )
            )
        keyring = SecretsKeyring([new_secrets_key()])
        await upgrade_database(engine, keyring=keyring)
        async with engine.connect() as connection:
            assert await connection.run_sync(current_revision) == head_revision()
            assert await connection.run_sync(schema_differences, Base.metadata) == []
            rows = (
                await connection.execute(
                    sa.select(
                        accounts.c.email,
                        accounts.c.default_webhook_secret,
                        accounts.c.sealed_webhook_secret,
                    )
                )
            ).all()
        assert [(email, clear) for email, clear, _ in rows] == [("ada@example.com", "")]
        assert keyring.open(rows[0][2]) == "whsec_x"  # sealed by migration 0004
    finally:
        await engine.dispose()


async def test_a_database_older_than_the_baseline_is_refused_not_guessed_at(
    database_url: str,
) -> None:
    """Without the `jobs` columns every start since issue 5 added, the tables are not the
    baseline's: stamping them would hide the gap until a query failed."""
    engine = make_engine(database_url)
    try:
        await upgrade_database(engine, "0001")
        async with engine.begin() as connection:
            await connection.execute(sa.text("DROP TABLE alembic_version"))
            for column in ("estimated_start_at", "queue_reason"):
                # SQLite (3.35+) and PostgreSQL both drop a column in place.
                await connection.execute(sa.text(f"ALTER TABLE jobs DROP COLUMN {column}"))
        with pytest.raises(UnknownSchema, match="estimated_start_at, queue_reason"):
            await upgrade_database(engine)
        async with engine.connect() as connection:
            assert "alembic_version" not in await connection.run_sync(table_names)
    finally:
        await engine.dispose()


async def test_down_to_nothing_and_up_again(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        await upgrade_database(engine)
        async with engine.begin() as connection:
            await connection.run_sync(downgrade_connection, "base")
        async with engine.connect() as connection:
            assert await connection.run_sync(table_names) == {"alembic_version"}
        await upgrade_database(engine)
        async with engine.connect() as connection:
            assert await connection.run_sync(schema_differences, Base.metadata) == []
    finally:
        await engine.dispose()
