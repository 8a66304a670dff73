"""The shared rate-limit store on PostgreSQL: exact under concurrency and across replicas.

Runs when KILN_TEST_POSTGRES_URL names a throwaway database, e.g.
`postgresql+asyncpg://postgres@127.0.0.1:5432/kiln_test` (its tables are dropped first);
skipped otherwise. The same tests run on SQLite in test_gateway_ratelimits_api.py.
"""

import asyncio
import os
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from kiln_gateway.ratelimit_stores import DatabaseCounterStore
from kiln_gateway.ratelimits import Quota, RateLimiter, window_start
from kiln_gateway.tables import Base
from kiln_runtime.db import make_engine
from tests.integration.gateway.conftest import bearer, gateway_without_kafka, make_settings

pytestmark = pytest.mark.integration

POSTGRES_URL = os.environ.get("KILN_TEST_POSTGRES_URL", "")
needs_postgres = pytest.mark.skipif(not POSTGRES_URL, reason="KILN_TEST_POSTGRES_URL not set")


async def _reset_database() -> None:
    engine = make_engine(POSTGRES_URL)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        # The gateway migrates at start: from nothing again, not from a stale revision.
        await conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
    await engine.dispose()


@needs_postgres
def test_replicas_on_postgresql_share_one_exact_count(tmp_path: Path) -> None:
    asyncio.run(_reset_database())
    settings = make_settings(tmp_path, database_url=POSTGRES_URL, rate_limit_live_read=5)
    at = window_start(time.time(), 60) + 30.0
    with gateway_without_kafka(settings) as one, gateway_without_kafka(settings) as two:
        for replica in (one, two):
            replica.state.rate_limiter.clock = lambda: at
        account = one.create_account("ada@example.com")
        key = bearer(one.create_key(account["id"])["secret"])
        remaining = [
            replica.client.get("/models", headers=key).headers["X-RateLimit-Remaining"]
            for replica in (one, two, one, two, one)
        ]
        assert remaining == ["4", "3", "2", "1", "0"]
        assert two.client.get("/models", headers=key).status_code == 429

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
