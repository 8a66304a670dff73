"""The scheduler on a real database through its handlers and timer: fairness across accounts,
the per-account limit, queue updates, retries with backoff, deadlines, lost workers, cancels."""

from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text

from kiln_contracts.v1 import jobs_pb2
from kiln_runtime.db import SessionFactory, make_engine, make_session_factory
from kiln_scheduler.config import SchedulerSettings
from kiln_scheduler.migrate import upgrade_connection
from tests.integration.scheduler.scheduler_events import (
    POOL,
    Harness,
    attempt_failed,
    cancel_requested,
    completed,
    of_type,
    started,
)

pytestmark = pytest.mark.integration


def settings(**overrides: object) -> SchedulerSettings:
    values: dict[str, object] = {
        "pool_capacity": {POOL: 2},
        "account_concurrency_limit": 1000,
        "retry_backoff_base_s": 1.0,
        "retry_backoff_cap_s": 4.0,
        "max_attempts": 3,
        "worker_start_timeout_s": 30.0,
        "worker_heartbeat_timeout_s": 60.0,
    }
    values.update(overrides)
    return SchedulerSettings(**values)  # type: ignore[arg-type]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def dispatched_ids(events: list) -> list[str]:  # type: ignore[type-arg]
    return [e.job_id for e in of_type(events, "job.dispatched")]


async def test_a_newcomer_is_not_stuck_behind_500_jobs(sessions: SessionFactory) -> None:
    h = Harness(sessions, settings(queue_update_batch=20))
    a_jobs = [await h.reserve("acct_a", f"a{i:03d}") for i in range(500)]
    running = dispatched_ids(h.emitted)
    assert running == ["a000", "a001"]
    b_jobs = [await h.reserve("acct_b", f"b{i}") for i in range(5)]
    # b's first job is told it is next in line.
    first_b = [e for e in of_type(h.emitted, "job.queued") if e.job_id == "b0"]
    assert first_b[-1].message.queue_position == 1
    order: list[str] = []
    while len(order) < 12:
        finished = running.pop(0)
        new = await h.deliver(completed("acct_a" if finished[0] == "a" else "acct_b", finished, 1))
        chosen = dispatched_ids(new)
        running += chosen
        order += chosen
    b_at = [i for i, job_id in enumerate(order) if job_id in b_jobs]
    assert len(b_at) == 5 and max(b_at) < 9, order
    # The queue kept explaining itself as it moved: a's waiting jobs got position updates,
    # bounded per move.
    # (one per new job, at most 20 more per move: 5 arrivals of b and 12 dispatches)
    assert len(of_type(h.emitted, "job.queued")) <= 505 + 20 * (5 + 12)
    last = {e.job_id: e.message for e in of_type(h.emitted, "job.queued")}
    assert last[a_jobs[10]].queue_position < 10
    assert last[a_jobs[10]].queue_reason == "capacity"
    assert last[a_jobs[10]].estimated_start_at.seconds > 0


async def test_concurrency_limit_per_account(sessions: SessionFactory) -> None:
    h = Harness(sessions, settings(pool_capacity={POOL: 8}, account_concurrency_limit=2))
    jobs = [await h.reserve("acct_a") for _ in range(5)]
    assert dispatched_ids(h.emitted) == jobs[:2]
    queued = {e.job_id: e.message for e in of_type(h.emitted, "job.queued")}
    assert queued[jobs[4]].queue_reason == "concurrency_limit"
    other = await h.reserve("acct_b")
    assert dispatched_ids(h.emitted)[-1] == other
    new = await h.deliver(completed("acct_a", jobs[0], 1))
    assert dispatched_ids(new) == [jobs[2]]


async def test_retryable_failure_is_retried_with_backoff_then_fails(
    sessions: SessionFactory,
) -> None:
    h = Harness(sessions, settings())
    retries = sample("kiln_scheduler_retries_total", pool=POOL, error_code="TRITON_UNAVAILABLE")
    job = await h.reserve("acct_a")
    now = datetime.now(UTC)
    for attempt in (1, 2):
        await h.deliver(started("acct_a", job, attempt))
        new = await h.deliver(attempt_failed("acct_a", job, attempt, "TRITON_UNAVAILABLE", True))
        assert dispatched_ids(new) == []  # backoff first
        assert of_type(new, "job.queued")[0].message.queue_position == 1
        row = await h.row(job)
        assert row.status == "queued"
        new = await h.tick(now + timedelta(seconds=30))
        [again] = of_type(new, "job.dispatched")
        assert again.message.attempt == attempt + 1
    new = await h.deliver(attempt_failed("acct_a", job, 3, "TRITON_UNAVAILABLE", True))
    [failed] = of_type(new, "job.failed")
    assert failed.message.error_code == "TRITON_UNAVAILABLE"
    assert failed.message.attempt == 3
    after = sample("kiln_scheduler_retries_total", pool=POOL, error_code="TRITON_UNAVAILABLE")
    assert after == retries + 2
    assert (await h.row(job)).status == "finished"


async def test_non_retryable_failure_fails_at_once_and_stale_attempts_are_ignored(
    sessions: SessionFactory,
) -> None:
    h = Harness(sessions, settings())
    job = await h.reserve("acct_a")
    assert await h.deliver(attempt_failed("acct_a", job, 7, "INVALID_INPUT", False)) == []
    new = await h.deliver(attempt_failed("acct_a", job, 1, "INVALID_INPUT", False))
    [failed] = of_type(new, "job.failed")
    assert failed.message.error_code == "INVALID_INPUT"
    assert await h.deliver(attempt_failed("acct_a", job, 1, "INVALID_INPUT", False)) == []


async def test_deadline_fails_queued_jobs_and_the_workers_timeout_fails_running_ones(
    sessions: SessionFactory,
) -> None:
    """A waiting job fails at its deadline; a running one is its worker's to end (it answers
    TIMEOUT at the deadline), so the scheduler does not fail it too, and a completion that
    arrives after the job's end is ignored."""
    h = Harness(sessions, settings(pool_capacity={POOL: 1}))
    queued_timeouts = sample("kiln_scheduler_timeouts_total", pool=POOL, status="queued")
    running_timeouts = sample("kiln_scheduler_timeouts_total", pool=POOL, status="running")
    running = await h.reserve("acct_a", deadline_s=5)
    queued = await h.reserve("acct_b", deadline_s=5)
    later = await h.reserve("acct_c", deadline_s=600)
    await h.deliver(started("acct_a", running, 1))
    new = await h.tick(h.now + timedelta(seconds=10))
    failed = {e.job_id: e.message for e in of_type(new, "job.failed")}
    assert set(failed) == {queued}
    assert failed[queued].error_code == "TIMEOUT"
    assert dispatched_ids(new) == []  # the running job still holds the pool's slot
    new = await h.deliver(attempt_failed("acct_a", running, 1, "TIMEOUT", False))
    [ended] = of_type(new, "job.failed")
    assert (ended.job_id, ended.message.error_code) == (running, "TIMEOUT")
    assert dispatched_ids(new) == [later]  # the slot is free again
    assert await h.deliver(completed("acct_a", running, 1)) == []
    assert (await h.row(running)).outcome == "timeout"
    assert sample("kiln_scheduler_timeouts_total", pool=POOL, status="queued") == (
        queued_timeouts + 1
    )
    assert sample("kiln_scheduler_timeouts_total", pool=POOL, status="running") == (
        running_timeouts + 1
    )
    assert sample("kiln_scheduler_in_flight", pool=POOL) == 1


async def test_a_running_job_whose_worker_never_answers_fails_after_the_deadline_grace(
    sessions: SessionFactory,
) -> None:
    h = Harness(sessions, settings(deadline_grace_s=30.0))
    job = await h.reserve("acct_a", deadline_s=5)
    await h.deliver(started("acct_a", job, 1))
    deadline = (await h.row(job)).deadline_at
    assert deadline is not None
    assert of_type(await h.tick(deadline + timedelta(seconds=29)), "job.failed") == []
    [failed] = of_type(await h.tick(deadline + timedelta(seconds=30)), "job.failed")
    assert (failed.job_id, failed.message.error_code) == (job, "TIMEOUT")
    assert (await h.row(job)).outcome == "timeout"


async def test_lost_worker_is_retried_and_its_stale_answer_ignored(
    sessions: SessionFactory,
) -> None:
    h = Harness(sessions, settings())
    job = await h.reserve("acct_a")
    now = datetime.now(UTC)
    assert await h.tick(now + timedelta(seconds=10)) == []
    await h.tick(now + timedelta(seconds=31))  # never started: lost
    row = await h.row(job)
    assert (row.status, row.last_error_code) == ("queued", "WORKER_LOST")
    [again] = of_type(await h.tick(now + timedelta(seconds=40)), "job.dispatched")
    assert again.message.attempt == 2
    assert await h.deliver(attempt_failed("acct_a", job, 1, "TRITON_UNAVAILABLE", True)) == []
    # Started, then silent past the heartbeat timeout: lost again.
    await h.deliver(started("acct_a", job, 2))
    await h.tick(datetime.now(UTC) + timedelta(seconds=61))
    assert (await h.row(job)).status == "queued"


async def test_a_scheduler_back_from_an_outage_gives_workers_their_timeout_again(
    sessions: SessionFactory,
) -> None:
    """The scheduler was away for longer than the start timeout (the workers' job.started
    wait in the topic): the tick right after it gets its partitions back must not declare
    their attempts lost; once the timeout has passed since, silence is the worker's again."""
    h = Harness(sessions, settings())
    job = await h.reserve("acct_a", deadline_s=3600)
    back = h.now + timedelta(seconds=200)
    await h.assign(frozenset({0}), 1, at=back)
    assert await h.tick(back + timedelta(seconds=1)) == []
    assert (await h.row(job)).status == "dispatched"
    await h.tick(back + timedelta(seconds=31))
    row = await h.row(job)
    assert (row.status, row.last_error_code) == ("queued", "WORKER_LOST")


async def test_a_scheduler_back_after_a_deadline_waits_the_grace_for_the_workers_answer(
    sessions: SessionFactory,
) -> None:
    h = Harness(sessions, settings(deadline_grace_s=30.0))
    job = await h.reserve("acct_a", deadline_s=5)
    await h.deliver(started("acct_a", job, 1))
    back = h.now + timedelta(seconds=100)
    await h.assign(frozenset({0}), 1, at=back)
    assert of_type(await h.tick(back + timedelta(seconds=1)), "job.failed") == []
    [failed] = of_type(await h.tick(back + timedelta(seconds=30)), "job.failed")
    assert (failed.job_id, failed.message.error_code) == (job, "TIMEOUT")


async def test_a_rebalance_does_not_restart_the_lost_worker_clock(
    sessions: SessionFactory,
) -> None:
    """aiokafka revokes every partition at a rebalance and assigns them again a moment
    later: a partition back within that moment keeps the time it was watched from."""
    h = Harness(sessions, settings())
    job = await h.reserve("acct_a", deadline_s=3600)
    back = h.now + timedelta(seconds=200)
    await h.assign(frozenset({0}), 1, at=back)
    await h.assign(frozenset(), 1, at=back + timedelta(seconds=10))
    await h.assign(frozenset({0}), 1, at=back + timedelta(seconds=12))
    await h.tick(back + timedelta(seconds=31))  # 30 s start timeout from `back`, not from +12
    row = await h.row(job)
    assert (row.status, row.last_error_code) == ("queued", "WORKER_LOST")


async def test_a_hold_of_the_consumer_restarts_the_lost_worker_clock(
    sessions: SessionFactory,
) -> None:
    """While the consumer waits out a transient failure the workers' reports wait unread; the
    timer then counts from the hold, as after a restart."""
    h = Harness(sessions, settings())
    job = await h.reserve("acct_a", deadline_s=3600)
    await h.assign(frozenset({0}), 1, at=h.now)
    held = h.now + timedelta(seconds=100)
    h.watch_again(at=held)
    assert await h.tick(held + timedelta(seconds=29)) == []
    await h.tick(held + timedelta(seconds=30))
    assert (await h.row(job)).last_error_code == "WORKER_LOST"


@pytest.mark.parametrize("silent", [frozenset({0}), frozenset({1})])
async def test_a_silent_broker_restarts_the_clocks_of_its_silent_partitions_only(
    sessions: SessionFactory, silent: frozenset[int]
) -> None:
    """The broker answered no fetch of `silent` for a while: the workers' reports on those
    partitions wait unread, so their clocks count from then; other partitions keep theirs."""
    h = Harness(sessions, settings())
    job = await h.reserve("acct_a", deadline_s=3600)  # partition 0 of 1
    await h.assign(frozenset({0}), 1, at=h.now)
    quiet = h.now + timedelta(seconds=100)
    h.watch_again(at=quiet, partitions=silent)
    await h.tick(quiet + timedelta(seconds=29))
    lost = (await h.row(job)).last_error_code == "WORKER_LOST"
    assert lost == (0 not in silent)


async def test_cancel_of_a_running_job_waits_for_the_worker(sessions: SessionFactory) -> None:
    h = Harness(sessions, settings())
    job = await h.reserve("acct_a")
    await h.deliver(started("acct_a", job, 1))
    assert await h.deliver(cancel_requested("acct_a", job)) == []
    assert (await h.row(job)).status == "canceling"
    new = await h.deliver(attempt_failed("acct_a", job, 1, "CANCELED", False))
    assert [e.type for e in new] == ["job.canceled"]
    # Completion wins over a pending cancel (it is charged).
    other = await h.reserve("acct_a")
    await h.deliver(cancel_requested("acct_a", other))
    new = await h.deliver(completed("acct_a", other, 1))
    assert of_type(new, "job.canceled") == []
    assert (await h.row(other)).outcome == "completed"


async def test_cancel_of_a_queued_or_backing_off_job_is_immediate(
    sessions: SessionFactory,
) -> None:
    h = Harness(sessions, settings(pool_capacity={POOL: 1}))
    first = await h.reserve("acct_a")
    second = await h.reserve("acct_b")
    new = await h.deliver(cancel_requested("acct_b", second))
    assert [e.type for e in new] == ["job.canceled"]
    await h.deliver(attempt_failed("acct_a", first, 1, "TRITON_UNAVAILABLE", True))
    new = await h.deliver(cancel_requested("acct_a", first))
    [canceled] = of_type(new, "job.canceled")
    assert isinstance(canceled.message, jobs_pb2.JobCanceled)


async def test_migrations_adopt_a_queue_made_before_them(tmp_path: object) -> None:
    """A database of the version before issue 5: the queue without the columns added since, and
    the first runtime's inbox, outbox and pool statistics (all made by `create_all`)."""
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path}/old.db")
    async with engine.begin() as conn:
        for ddl in (
            "CREATE TABLE inbox (id INTEGER PRIMARY KEY, consumer VARCHAR(64) NOT NULL, "
            "event_id VARCHAR(64) NOT NULL, event_type VARCHAR(64) NOT NULL, received_at "
            "DATETIME NOT NULL, CONSTRAINT uq_inbox_consumer_event UNIQUE (consumer, event_id))",
            "CREATE TABLE outbox (id INTEGER PRIMARY KEY, topic VARCHAR(128) NOT NULL, key "
            "VARCHAR(128) NOT NULL, event_id VARCHAR(64) NOT NULL UNIQUE, payload BLOB NOT NULL,"
            " created_at DATETIME NOT NULL, published_at DATETIME)",
            "CREATE INDEX ix_outbox_published_at ON outbox (published_at)",
            "CREATE TABLE pool_stats (pool VARCHAR(64) PRIMARY KEY, mean_duration_s FLOAT, "
            "samples INTEGER NOT NULL)",
            "INSERT INTO pool_stats VALUES ('*', NULL, 0)",
        ):
            await conn.execute(text(ddl))
        await conn.execute(
            text(
                "CREATE TABLE queued_jobs (seq INTEGER PRIMARY KEY, job_id VARCHAR(64) UNIQUE, "
                "account_id VARCHAR(64), pool VARCHAR(64), spec BLOB, price_millicredits BIGINT,"
                " status VARCHAR(16), attempt INTEGER, enqueued_at DATETIME, dispatched_at "
                "DATETIME, finished_at DATETIME)"
            )
        )
        await conn.execute(
            text(
                "INSERT INTO queued_jobs (job_id, account_id, pool, spec, price_millicredits, "
                "status, attempt) VALUES ('j', 'a', 'p', x'', 0, 'queued', 0)"
            )
        )
    for _ in range(2):  # a second start finds nothing to do
        async with engine.begin() as connection:
            await connection.run_sync(upgrade_connection)
    h = Harness(make_session_factory(engine), settings())
    row = await h.row("j")
    assert row.deadline_at is None and row.queue_reason is None
    await engine.dispose()


async def test_waiting_jobs_say_no_workers_when_nothing_handed_out_starts(
    sessions: SessionFactory,
) -> None:
    h = Harness(sessions, settings(pool_capacity={POOL: 1}, no_workers_after_s=15))
    first = await h.reserve("acct_a")
    second = await h.reserve("acct_b")
    [queued] = [e for e in of_type(h.emitted, "job.queued") if e.job_id == second]
    assert queued.message.queue_reason == "capacity"
    new = await h.tick(datetime.now(UTC) + timedelta(seconds=20))
    [update] = of_type(new, "job.queued")
    assert (update.job_id, update.message.queue_reason) == (second, "no_workers")
    await h.deliver(started("acct_a", first, 1))
    new = await h.tick(datetime.now(UTC) + timedelta(seconds=21))
    [update] = of_type(new, "job.queued")
    assert update.message.queue_reason == "capacity"


async def test_mean_durations_are_stored_once_per_batch_and_count_every_job(
    sessions: SessionFactory,
) -> None:
    h = Harness(sessions, settings(pool_capacity={POOL: 8}))
    jobs = [await h.reserve("acct_a") for _ in range(6)]
    for job in jobs:
        await h.deliver(started("acct_a", job, 1))
    # three finish in one batch, then three one by one
    await h.driver.process_batch([completed("acct_a", job, 1) for job in jobs[:3]])
    for job in jobs[3:]:
        await h.deliver(completed("acct_a", job, 1))
    stored = await h.db.read(
        lambda c: c.execute(
            text("SELECT mean_duration_s, samples FROM pool_stats WHERE pool = :p"), {"p": POOL}
        ).one()
    )
    assert stored.samples == 6
    assert stored.mean_duration_s == pytest.approx(h.scheduler.means[POOL])
    # a scheduler started afresh reads the same mean
    again = Harness(sessions, settings(pool_capacity={POOL: 8}))
    await again.tick(again.now)
    assert again.scheduler.means[POOL] == pytest.approx(h.scheduler.means[POOL])
