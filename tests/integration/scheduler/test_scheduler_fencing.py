"""Two scheduler instances on one database, one of which lost its partitions without knowing it
yet (cut off from the broker, or paused past its session): whichever writes a job's change
first wins, and the other's stale copy changes nothing. Its transaction rolls back (no second
job.failed, no second dispatch), the failure is transient (the consumer tries the batch again,
it is never dead-lettered), and the instance reads its queue again."""

from datetime import timedelta

import pytest
from sqlalchemy import select

from kiln_contracts import decode
from kiln_contracts.v1 import jobs_pb2
from kiln_runtime.consumer import partition_of
from kiln_runtime.db import SessionFactory
from kiln_runtime.failures import is_transient
from kiln_scheduler.config import SchedulerSettings
from kiln_scheduler.repository import ChangedElsewhere
from kiln_scheduler.tables import MESSAGING
from tests.integration.scheduler.scheduler_events import (
    POOL,
    Harness,
    completed,
    event,
    spec,
    started,
)

pytestmark = pytest.mark.integration


def settings() -> SchedulerSettings:
    return SchedulerSettings(
        pool_capacity={POOL: 1},
        worker_start_timeout_s=30.0,
        worker_heartbeat_timeout_s=60.0,
        retry_backoff_base_s=1.0,
        retry_backoff_cap_s=4.0,
    )


def instances(sessions: SessionFactory) -> tuple[Harness, Harness]:
    """(the owner, a zombie that read the same queue), each driven exactly as the runtime
    drives it: no rehearsal, which would read the queue again before every write."""
    owner = Harness(sessions, settings())
    zombie = Harness(sessions, settings(), now=owner.now)
    for h in (owner, zombie):
        h.driver.rehearse_writes = False
    return owner, zombie


async def sent(h: Harness, kind: str, job_id: str) -> int:
    """How many `kind` events of the job are in the (shared) outbox."""
    table = MESSAGING.outbox
    async with h.sessions() as session:
        payloads = (await session.execute(select(table.c.payload))).scalars().all()
    return sum(1 for p in payloads if (e := decode(p)).type == kind and e.job_id == job_id)


async def test_a_stale_instance_does_not_fail_a_job_again(sessions: SessionFactory) -> None:
    owner, zombie = instances(sessions)
    running = await owner.reserve("acct_a", deadline_s=5)
    queued = await owner.reserve("acct_b", deadline_s=5)
    await zombie.tick(owner.now)  # the zombie reads the queue while it still holds it
    await owner.deliver(started("acct_a", running, 1))
    await owner.tick(owner.now + timedelta(seconds=10))  # the owner fails the waiting job
    assert await sent(owner, "job.failed", queued) == 1
    with pytest.raises(ChangedElsewhere) as stale:
        await zombie.tick(owner.now + timedelta(seconds=10))
    assert is_transient(stale.value)
    assert await sent(owner, "job.failed", queued) == 1
    # Read again, the zombie sees the job ended and the other one running.
    await zombie.tick(owner.now + timedelta(seconds=11))
    assert await sent(owner, "job.failed", queued) == 1
    assert (await owner.row(running)).status == "running"


async def test_the_owner_does_not_act_on_a_job_a_stale_instance_changed_first(
    sessions: SessionFactory,
) -> None:
    owner, zombie = instances(sessions)
    job = await owner.reserve("acct_a")
    await zombie.tick(owner.now)
    # The zombie, not reading the worker's reports any more, declares the worker lost first
    # and hands the job out again.
    await zombie.tick(owner.now + timedelta(seconds=31))
    assert (await owner.row(job)).last_error_code == "WORKER_LOST"
    # The owner's batch, from its stale copy, rolls back and is tried again on a fresh one,
    # where the first attempt's start is stale.
    with pytest.raises(ChangedElsewhere):
        await owner.deliver(started("acct_a", job, 1))
    await owner.deliver(started("acct_a", job, 1))
    row = await owner.row(job)
    assert (row.status, row.attempt) == ("queued", 1)
    assert await sent(owner, "job.dispatched", job) == 1  # the first attempt only, so far
    await zombie.tick(owner.now + timedelta(seconds=40))  # the retry's backoff is over
    assert await sent(owner, "job.dispatched", job) == 2
    # The owner's copy still waits, but the pool's one slot, shared, is taken: nothing is
    # dispatched twice. The second attempt's start then meets the stale copy, and is handled
    # on a fresh one.
    await owner.tick(owner.now + timedelta(seconds=41))
    assert await sent(owner, "job.dispatched", job) == 2
    with pytest.raises(ChangedElsewhere):
        await owner.deliver(started("acct_a", job, 2))
    await owner.deliver(started("acct_a", job, 2))
    row = await owner.row(job)
    assert (row.status, row.attempt) == ("running", 2)


async def test_a_job_a_stale_instance_took_in_is_not_lost_to_the_owner(
    sessions: SessionFactory,
) -> None:
    """The zombie's batch of a reservation commits before the owner moved that partition (the
    positions cannot fence it yet): the owner's copy, read before, lacks the job. Its worker's
    reports then read the queue again instead of being dropped as a finished job's."""
    owner, zombie = instances(sessions)
    await owner.tick(owner.now)  # the owner reads its queue
    job = await zombie.reserve("acct_a")
    with pytest.raises(ChangedElsewhere):
        await owner.deliver(started("acct_a", job, 1))
    await owner.deliver(started("acct_a", job, 1))
    assert (await owner.row(job)).status == "running"


async def test_both_ends_of_a_job_in_one_batch_need_no_second_read(
    sessions: SessionFactory,
) -> None:
    """A job that ended earlier in the batch is not in the copy any more and its row is not
    written yet: the batch's later event of it is not taken for another instance's work."""
    owner, _zombie = instances(sessions)
    job = await owner.reserve("acct_a")
    await owner.deliver(started("acct_a", job, 1))
    failed = jobs_pb2.JobFailed(spec=spec(), attempt=1, error_code="INFERENCE_ERROR")
    outcomes = await owner.driver.process_batch(
        [completed("acct_a", job, 1), event("job.failed", failed, "acct_a", job)]
    )
    assert outcomes == ["processed", "processed"]
    assert (await owner.row(job)).outcome == "completed"


async def test_a_job_of_an_account_now_on_another_partition_does_not_stall_the_batch(
    sessions: SessionFactory,
) -> None:
    """Partitions were added: the account of a job waiting in this instance's old partition now
    maps to one this instance does not hold, so no reload brings the job in. Its report is
    left alone (as a finished job's) instead of failing the batch again and again."""
    owner, _zombie = instances(sessions)
    await owner.assign(frozenset({0}), 1, owner.now)
    job = await owner.reserve("acct_a")
    elsewhere = partition_of("acct_a", 2)
    await owner.assign(frozenset({1 - elsewhere}), 2, owner.now)
    assert await owner.driver.process(started("acct_a", job, 1))
    assert (await owner.row(job)).status == "dispatched"
