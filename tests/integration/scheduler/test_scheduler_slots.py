"""The pools' shared slot counts on PostgreSQL, where two scheduler instances' transactions run
side by side: a recount at assignment must not miss the jobs of a batch that commits while it
runs."""

import threading
import time

import pytest
from sqlalchemy import Connection, insert, select

from kiln_runtime.db import SessionFactory, make_sync_engine
from kiln_scheduler import repository
from kiln_scheduler.tables import PoolSlots, QueuedJob

pytestmark = pytest.mark.integration

POOL = "cpu-image"


def dispatched_job(connection: Connection, job_id: str) -> None:
    connection.execute(
        insert(QueuedJob.__table__).values(
            job_id=job_id,
            account_id="acct_a",
            pool=POOL,
            spec=b"",
            price_millicredits=1000,
            status="dispatched",
            attempt=1,
        )
    )


def in_flight(connection: Connection) -> int:
    return int(
        connection.execute(
            select(PoolSlots.__table__.c.in_flight).where(PoolSlots.__table__.c.pool == POOL)
        ).scalar_one()
    )


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_recount_waits_for_a_batch_that_moves_the_pool(
    sessions: SessionFactory, database_url: str
) -> None:
    """Instance B's batch has moved the pool's slots and written its dispatched job, not yet
    committed, when instance A (given partitions) recounts; B then commits. The count must end
    at the jobs in flight: a count taken before B's commit, written after it, loses B's job."""
    engine = make_sync_engine(database_url)
    try:
        with engine.begin() as setup:
            dispatched_job(setup, "job_before")
            repository.move_slots(setup, POOL, 1)
        batch = engine.connect()
        batch.begin()
        repository.move_slots(batch, POOL, 1)  # B's batch: its pool's row first, then its job
        dispatched_job(batch, "job_b")
        recounted = threading.Event()

        def recount() -> None:
            with engine.begin() as connection:
                repository.recount_slots(connection)
            recounted.set()

        a = threading.Thread(target=recount)
        a.start()
        time.sleep(0.5)  # A has begun and waits for B's row (or, before the fix, counted)
        assert not recounted.is_set(), "the recount waits for the batch holding the pool's row"
        batch.commit()
        batch.close()
        a.join(timeout=10)
        assert recounted.is_set()
        with engine.connect() as check:
            assert in_flight(check) == 2
    finally:
        engine.dispose()
