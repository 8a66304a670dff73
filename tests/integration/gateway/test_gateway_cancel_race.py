"""A cancel never puts a finished job back to `canceling` (a real SQLite file).

On SQLite the cancel's read of the job takes no lock, so the read model's consumer can write
the job's end between that read and the cancel's write. Found by the billing crash test: a
job whose `job.completed` was projected stayed `canceling` for good."""

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from kiln_gateway.jobs import repository
from kiln_gateway.tables import MESSAGING, Base, Job
from kiln_runtime.db import make_engine, make_session_factory, transaction

pytestmark = pytest.mark.integration

ACCOUNT = "acct_race"


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path}/gateway.db")
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    try:
        yield engine
    finally:
        await engine.dispose()


async def add_job(engine: AsyncEngine, job_id: str, status: str) -> None:
    async with transaction(make_session_factory(engine)) as session:
        session.add(
            Job(
                id=job_id,
                account_id=ACCOUNT,
                api_key_id="key_race",
                model="kiln/text-to-speech",
                status=status,
                input={"text": "race"},
                sandbox=False,
            )
        )


async def status_and_requests(engine: AsyncEngine, job_id: str) -> tuple[str, int]:
    outbox = MESSAGING.outbox
    async with engine.connect() as connection:
        status = (
            await connection.execute(sa.select(Job.status).where(Job.id == job_id))
        ).scalar_one()
        requests = (
            # Only a cancel request writes an outbox row here.
            await connection.execute(sa.select(sa.func.count()).select_from(outbox))
        ).scalar_one()
    return status, requests


async def test_a_job_that_ended_after_the_cancel_read_it_stays_ended(engine: AsyncEngine) -> None:
    await add_job(engine, "job_a", "running")
    async with transaction(make_session_factory(engine)) as session:
        job = await repository.account_job(session, ACCOUNT, "job_a", for_update=True)
        assert job is not None and job.status == "running"
        # The read model's consumer, on its own connection, projects job.completed now.
        async with engine.begin() as consumer:
            await consumer.execute(
                sa.update(Job).where(Job.id == "job_a").values(status="completed")
            )
        asked = await repository.request_cancel(session, job, "key_race", datetime.now(UTC))
    assert not asked and job.status == "completed"  # what the endpoint answers 409 with
    assert await status_and_requests(engine, "job_a") == ("completed", 0)


async def test_an_open_job_is_canceling_and_the_pipeline_is_asked_once(
    engine: AsyncEngine,
) -> None:
    await add_job(engine, "job_b", "queued")
    sessions = make_session_factory(engine)
    async with transaction(sessions) as session:
        job = await repository.account_job(session, ACCOUNT, "job_b", for_update=True)
        assert job is not None
        # It moved on (not to an end) since it was read: the cancel still goes through.
        async with engine.begin() as consumer:
            await consumer.execute(sa.update(Job).where(Job.id == "job_b").values(status="running"))
        assert await repository.request_cancel(session, job, "key_race", datetime.now(UTC))
    assert job.status == "canceling"
    assert await status_and_requests(engine, "job_b") == ("canceling", 1)
    # Two requests that both read it open: the second finds it asked already, not asked again.
    await add_job(engine, "job_c", "running")
    async with transaction(sessions) as second:
        seen = await repository.account_job(second, ACCOUNT, "job_c", for_update=True)
        assert seen is not None and seen.status == "running"
        async with transaction(sessions) as first:
            earlier = await repository.account_job(first, ACCOUNT, "job_c", for_update=True)
            assert earlier is not None
            assert await repository.request_cancel(first, earlier, "key_a", datetime.now(UTC))
        assert await repository.request_cancel(second, seen, "key_b", datetime.now(UTC))
    assert await status_and_requests(engine, "job_c") == ("canceling", 2)  # job_b's and one
