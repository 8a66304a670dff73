"""What follows a failed attempt, and which jobs the timer acts on."""

from datetime import UTC, datetime, timedelta

from kiln_scheduler.decisions import (
    Cancel,
    GiveUp,
    LivenessPolicy,
    Retry,
    RetryPolicy,
    Tracked,
    after_failed_attempt,
    lost_worker,
    past_deadline,
    updated_mean,
    workers_absent,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = RetryPolicy(max_attempts=3, backoff_base_s=2.0, backoff_cap_s=5.0)


def decide(**overrides: object) -> object:
    args: dict[str, object] = {
        "attempt": 1,
        "error_code": "TRITON_UNAVAILABLE",
        "error_message": "Triton is unavailable.",
        "retryable": True,
        "cancel_requested": False,
        "deadline": NOW + timedelta(minutes=5),
        "now": NOW,
        "policy": POLICY,
    }
    args.update(overrides)
    return after_failed_attempt(**args)  # type: ignore[arg-type]


def test_backoff_is_exponential_and_capped() -> None:
    assert [POLICY.backoff(n).total_seconds() for n in (1, 2, 3, 4)] == [2.0, 4.0, 5.0, 5.0]


def test_retryable_failures_are_retried_after_backoff_until_attempts_run_out() -> None:
    assert decide(attempt=1) == Retry(NOW + timedelta(seconds=2))
    assert decide(attempt=2) == Retry(NOW + timedelta(seconds=4))
    final = decide(attempt=3)
    assert isinstance(final, GiveUp)
    assert final.error_code == "TRITON_UNAVAILABLE"
    assert "3 attempts" in final.error_message


def test_non_retryable_failure_fails_at_once() -> None:
    assert decide(error_code="INVALID_INPUT", error_message="bad image", retryable=False) == (
        GiveUp("INVALID_INPUT", "bad image")
    )


def test_no_retry_that_could_not_start_before_the_deadline() -> None:
    outcome = decide(deadline=NOW + timedelta(seconds=1))
    assert isinstance(outcome, GiveUp)


def test_cancel_wins_over_retry() -> None:
    assert decide(error_code="CANCELED", retryable=False) == Cancel()
    assert decide(cancel_requested=True) == Cancel()


def tracked(**overrides: object) -> Tracked:
    args: dict[str, object] = {
        "job_id": "j",
        "status": "dispatched",
        "deadline": NOW + timedelta(minutes=2),
        "dispatched_at": NOW,
        "started_at": None,
        "last_seen_at": None,
    }
    args.update(overrides)
    return Tracked(**args)  # type: ignore[arg-type]


def test_deadline() -> None:
    job = tracked()
    assert not past_deadline(job, NOW + timedelta(seconds=119))
    assert past_deadline(job, NOW + timedelta(seconds=120))
    assert not past_deadline(tracked(deadline=None), NOW + timedelta(days=9))


def test_a_job_a_worker_holds_is_past_its_deadline_only_after_the_grace() -> None:
    deadline = NOW + timedelta(minutes=2)
    for status in ("dispatched", "running", "canceling"):
        held = tracked(status=status)
        assert not past_deadline(held, deadline + timedelta(seconds=29), grace_s=30)
        assert past_deadline(held, deadline + timedelta(seconds=30), grace_s=30)
    assert past_deadline(tracked(status="queued"), deadline, grace_s=30)
    # a scheduler back after the deadline waits the grace from its return (the worker's
    # answer may be in the topic behind its first tick)
    back = deadline + timedelta(minutes=5)
    held = tracked(status="running", watched_since=back)
    assert not past_deadline(held, back + timedelta(seconds=29), grace_s=30)
    assert past_deadline(held, back + timedelta(seconds=30), grace_s=30)


def test_lost_worker_rules() -> None:
    policy = LivenessPolicy(start_timeout_s=10, heartbeat_timeout_s=30)
    dispatched = tracked()
    assert not lost_worker(dispatched, NOW + timedelta(seconds=9), policy)
    assert lost_worker(dispatched, NOW + timedelta(seconds=10), policy)
    running = tracked(status="running", started_at=NOW, last_seen_at=NOW + timedelta(seconds=20))
    assert not lost_worker(running, NOW + timedelta(seconds=49), policy)
    assert lost_worker(running, NOW + timedelta(seconds=50), policy)
    assert not lost_worker(tracked(status="queued"), NOW + timedelta(days=1), policy)


def test_lost_worker_counts_from_when_the_scheduler_began_to_watch() -> None:
    policy = LivenessPolicy(start_timeout_s=10, heartbeat_timeout_s=30)
    back = NOW + timedelta(seconds=100)  # the scheduler got the partition (again) then
    dispatched = tracked(watched_since=back)
    assert not lost_worker(dispatched, back + timedelta(seconds=9), policy)
    assert lost_worker(dispatched, back + timedelta(seconds=10), policy)
    running = tracked(status="running", started_at=NOW, last_seen_at=NOW, watched_since=back)
    assert not lost_worker(running, back + timedelta(seconds=29), policy)
    assert lost_worker(running, back + timedelta(seconds=30), policy)
    heard_later = tracked(
        status="running",
        started_at=NOW,
        last_seen_at=back + timedelta(seconds=5),
        watched_since=back,
    )
    assert not lost_worker(heard_later, back + timedelta(seconds=34), policy)


def test_moving_average() -> None:
    assert updated_mean(None, 4.0, 0.5) == 4.0
    assert updated_mean(4.0, 8.0, 0.5) == 6.0


def test_workers_absent_when_nothing_handed_out_starts() -> None:
    assert not workers_absent(None, 0, NOW, 15)
    assert not workers_absent(NOW, 0, NOW + timedelta(seconds=14), 15)
    assert workers_absent(NOW, 0, NOW + timedelta(seconds=15), 15)
    assert not workers_absent(NOW, 1, NOW + timedelta(seconds=60), 15)
