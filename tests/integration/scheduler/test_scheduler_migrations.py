"""The scheduler's schema comes from its Alembic migrations, on SQLite and PostgreSQL: they
build exactly the models' tables, and 0003 gives the jobs already queued a version to start
from."""

import pytest
import sqlalchemy as sa

from kiln_runtime.db import make_engine
from kiln_runtime.migrations import current_revision
from kiln_scheduler.migrate import upgrade_connection
from kiln_scheduler.tables import Base
from tests.integration.schema_support import schema_differences

pytestmark = pytest.mark.integration


async def test_the_migrations_build_exactly_the_models_tables(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(lambda c: upgrade_connection(c, "0002"))
            await connection.execute(
                sa.text(
                    "INSERT INTO queued_jobs (job_id, account_id, pool, spec, "
                    "price_millicredits, status, attempt, enqueued_at) VALUES ('j', 'a', 'p', "
                    ":spec, 0, 'queued', 0, CURRENT_TIMESTAMP)"
                ),
                {"spec": b""},
            )
        for _ in range(2):  # a second start finds nothing to do
            async with engine.begin() as connection:
                await connection.run_sync(upgrade_connection)
        async with engine.connect() as connection:
            assert await connection.run_sync(current_revision) == "0003"
            assert await connection.run_sync(schema_differences, Base.metadata) == []
            version = await connection.scalar(sa.text("SELECT version FROM queued_jobs"))
        assert version == 0
    finally:
        await engine.dispose()


async def test_the_adoption_list_is_what_revision_0001_builds(database_url: str) -> None:
    """The adoption of a queue made before migrations adds the baseline's columns only; the
    list it keeps (`_BASELINE_COLUMNS`) must be exactly revision 0001's columns."""
    from kiln_scheduler.migrate import _BASELINE_COLUMNS

    engine = make_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(lambda c: upgrade_connection(c, "0001"))
        async with engine.connect() as connection:
            columns = await connection.run_sync(
                lambda c: {col["name"] for col in sa.inspect(c).get_columns("queued_jobs")}
            )
        assert columns == _BASELINE_COLUMNS
    finally:
        await engine.dispose()
