"""The rate-limit stores on PostgreSQL: replicas share the default store's count at each sync;
counting per request is exact under concurrency and across replicas.

Runs on a fresh database of the suite's PostgreSQL cluster (Debian's binaries), or on the
throwaway database KILN_TEST_POSTGRES_URL names, e.g.
`postgresql+asyncpg://postgres@127.0.0.1:5432/kiln_test` (its tables are dropped first). The
same tests run on SQLite in test_gateway_ratelimits_api.py.
"""

import asyncio
import os
from pathlib import Path

import pytest
from sqlalchemy import text

from kiln_gateway.ratelimit_stores import DatabaseCounterStore
from kiln_gateway.ratelimits import Quota, RateLimiter
from kiln_gateway.tables import Base
from kiln_runtime.db import make_engine
from tests.integration.billing.postgres_cluster import PostgresCluster
from tests.integration.gateway.conftest import bearer
from tests.integration.gateway.ratelimit_support import (
    replicas,
    share_one_exact_count,
    share_the_count_at_each_sync,
)

pytestmark = pytest.mark.integration

GIVEN_URL = os.environ.get("KILN_TEST_POSTGRES_URL", "")


async def _reset_database(url: str) -> None:
    engine = make_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        # The gateway migrates at start: from nothing again, not from a stale revision.
        await conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
    await engine.dispose()


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest) -> str:
    if GIVEN_URL:
        asyncio.run(_reset_database(GIVEN_URL))
        return GIVEN_URL
    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
    return cluster.new_database("gateway")


def test_replicas_on_postgresql_share_the_count_at_each_sync(
    tmp_path: Path, postgres_url: str
) -> None:
    """The default store: each replica counts at once and adds its hits to the shared row at
    each sync, learning the others' as it does."""
    with replicas(tmp_path, "database", database_url=postgres_url) as (one, two):
        share_the_count_at_each_sync(one, two)


def test_replicas_on_postgresql_counting_per_request_share_one_exact_count(
    tmp_path: Path, postgres_url: str
) -> None:
    with replicas(tmp_path, "database-per-request", database_url=postgres_url) as (one, two):
        share_one_exact_count(one, two)

        limiter = RateLimiter(DatabaseCounterStore(lambda: one.state.runtime.engine))
        quota = Quota(30, 3600)

        async def burst() -> list[int]:
            decisions = await asyncio.gather(*(limiter.hit("burst", quota) for _ in range(50)))
            return [d.count for d in decisions]

        counts = one.client.portal.call(burst)  # type: ignore[union-attr]
        assert sorted(counts) == list(range(1, 51))

        # Login throttling and key management work on PostgreSQL too.
        session = bearer(one.login("ada@example.com"))
        assert two.client.get("/keys", headers=session).status_code == 200
