"""The scheduler's pure dispatch decisions: capacity, weighted fairness, concurrency limits,
queue positions, reasons and ETAs."""

from datetime import UTC, datetime, timedelta

from kiln_scheduler.decisions import (
    FairnessPolicy,
    Waiting,
    choose_dispatches,
    fair_order,
    queue_position,
    queue_standings,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
WAITING = [Waiting("j3", "a", 3), Waiting("j1", "a", 1), Waiting("j2", "b", 2)]
NO_LIMIT = FairnessPolicy(concurrency_limit=10_000)


def test_dispatches_up_to_free_capacity() -> None:
    assert choose_dispatches(WAITING, {}, capacity=2, policy=NO_LIMIT) == ["j1", "j2"]
    assert choose_dispatches(WAITING, {"x": 1}, capacity=2, policy=NO_LIMIT) == ["j1"]
    assert choose_dispatches(WAITING, {"x": 2}, capacity=2, policy=NO_LIMIT) == []
    assert choose_dispatches(WAITING, {"x": 5}, capacity=2, policy=NO_LIMIT) == []


def test_one_account_alone_runs_in_arrival_order() -> None:
    waiting = [Waiting(f"j{i}", "a", i) for i in (5, 2, 9, 1)]
    assert [w.job_id for w in fair_order(waiting, {}, NO_LIMIT)] == ["j1", "j2", "j5", "j9"]


def test_five_jobs_of_a_newcomer_start_within_the_next_dispatches_not_after_500() -> None:
    """Account a queued 500 jobs and fills the pool (capacity 2); b then queues 5. As running
    jobs finish one at a time, b's five jobs are dispatched within the next 9 dispatches
    (alternating with a's), not after a's 500."""
    waiting = [Waiting(f"a{i}", "a", i) for i in range(500)]
    running = choose_dispatches(waiting, {}, capacity=2, policy=NO_LIMIT)
    assert running == ["a0", "a1"]
    waiting = [w for w in waiting if w.job_id not in running]
    waiting += [Waiting(f"b{i}", "b", 1000 + i) for i in range(5)]
    dispatched: list[str] = []
    while len(dispatched) < 12:
        running.pop(0)  # the oldest running job finishes
        busy: dict[str, int] = {}
        for job_id in running:
            busy[job_id[0]] = busy.get(job_id[0], 0) + 1
        chosen = choose_dispatches(waiting, busy, capacity=2, policy=NO_LIMIT)
        assert len(chosen) == 1
        running += chosen
        dispatched += chosen
        waiting = [w for w in waiting if w.job_id not in chosen]
    b_at = [i for i, job_id in enumerate(dispatched) if job_id.startswith("b")]
    assert len(b_at) == 5 and max(b_at) < 9, dispatched


def test_fair_order_interleaves_a_newcomer_ahead_of_a_backlog() -> None:
    waiting = [Waiting(f"a{i}", "a", i) for i in range(500)]
    waiting += [Waiting(f"b{i}", "b", 1000 + i) for i in range(5)]
    order = [w.job_id for w in fair_order(waiting, {"a": 2}, NO_LIMIT)]
    # b holds nothing, a holds 2 slots: b's jobs come first, then they alternate.
    assert order[:5] == ["b0", "b1", "a0", "b2", "a1"]
    assert max(order.index(f"b{i}") for i in range(5)) < 10
    assert queue_position(waiting, "b0", {"a": 2}, NO_LIMIT) == 1
    assert queue_position(waiting, "a499", {"a": 2}, NO_LIMIT) == 505


def test_weights_give_proportional_shares() -> None:
    policy = FairnessPolicy(weights={"big": 3.0}, concurrency_limit=10_000)
    waiting = [Waiting(f"s{i}", "small", i) for i in range(40)]
    waiting += [Waiting(f"b{i}", "big", 100 + i) for i in range(40)]
    first = [w.account_id for w in fair_order(waiting, {}, policy)[:40]]
    assert first.count("big") == 30 and first.count("small") == 10


def test_concurrency_limit_per_account_holds_and_leaves_room_for_others() -> None:
    policy = FairnessPolicy(concurrency_limit=2, concurrency_limits={"vip": 5})
    waiting = [Waiting(f"a{i}", "a", i) for i in range(10)]
    assert choose_dispatches(waiting, {}, capacity=8, policy=policy) == ["a0", "a1"]
    assert choose_dispatches(waiting, {"a": 2}, capacity=8, policy=policy) == []
    waiting += [Waiting(f"v{i}", "vip", 100 + i) for i in range(10)]
    chosen = choose_dispatches(waiting, {"a": 1}, capacity=8, policy=policy)
    assert [j for j in chosen if j.startswith("a")] == ["a0"]
    assert [j for j in chosen if j.startswith("v")] == [f"v{i}" for i in range(5)]


def test_jobs_in_backoff_wait_until_ready() -> None:
    waiting = [
        Waiting("later", "a", 1, ready_at=NOW + timedelta(seconds=5)),
        Waiting("now", "b", 2),
        Waiting("due", "c", 3, ready_at=NOW),
    ]
    assert choose_dispatches(waiting, {}, 8, NO_LIMIT, NOW) == ["now", "due"]
    assert choose_dispatches(waiting, {}, 8, NO_LIMIT, NOW + timedelta(seconds=5)) == [
        "later",
        "now",
        "due",
    ]


def test_standings_give_position_reason_and_eta() -> None:
    policy = FairnessPolicy(concurrency_limit=2)
    waiting = [Waiting("a0", "a", 1), Waiting("a1", "a", 2), Waiting("b0", "b", 3)]
    standings = queue_standings(waiting, {"a": 2}, 2, policy, NOW, mean_duration_s=10.0)
    assert [(s.job_id, s.position, s.reason) for s in standings] == [
        ("b0", 1, "capacity"),
        ("a0", 2, "concurrency_limit"),
        ("a1", 3, "concurrency_limit"),
    ]
    assert [s.estimated_start_at - NOW for s in standings] == [
        timedelta(seconds=10),
        timedelta(seconds=10),
        timedelta(seconds=20),
    ]
    none = queue_standings(waiting, {}, 0, policy, NOW, 10.0)
    assert {s.reason for s in none} == {"no_workers"}


def test_eta_is_not_before_a_retry_backoff_ends() -> None:
    ready = NOW + timedelta(seconds=30)
    [standing] = queue_standings(
        [Waiting("r", "a", 1, ready_at=ready)], {}, 2, FairnessPolicy(), NOW, 1.0
    )
    assert standing.estimated_start_at == ready
