"""The scheduler's handlers and timer on a real database, SQLite and PostgreSQL alike:
`database_url` is parametrized over both, each test gets a fresh database made by the
scheduler's own `migrate`."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kiln_runtime.db import SessionFactory, make_engine, make_session_factory
from kiln_scheduler.migrate import upgrade_connection
from tests.integration.billing.postgres_cluster import PostgresCluster

BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(params=BACKENDS)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/scheduler.db"
    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
    return cluster.new_database("scheduler")


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[SessionFactory]:
    engine = make_engine(database_url)
    async with engine.begin() as connection:
        await connection.run_sync(upgrade_connection)
    try:
        yield make_session_factory(engine)
    finally:
        await engine.dispose()
