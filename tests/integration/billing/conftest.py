"""Billing's ledger on a real database, SQLite and PostgreSQL alike: `database_url` is
parametrized over both, each test gets a fresh database brought up by billing's Alembic
migrations, and `sessions` is a session factory on it."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kiln_billing.migrate import upgrade_database
from kiln_runtime.db import SessionFactory, make_engine, make_session_factory
from tests.integration.billing.postgres_cluster import PostgresCluster

BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(params=BACKENDS)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each backend."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/billing.db"
    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
    return cluster.new_database("billing")


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[SessionFactory]:
    """Sessions on a fresh database at billing's latest schema (`alembic upgrade head`)."""
    engine = make_engine(database_url)
    await upgrade_database(engine)
    try:
        yield make_session_factory(engine)
    finally:
        await engine.dispose()
