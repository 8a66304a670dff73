"""The scheduler's queue in memory: who waits and who holds a slot, per pool and account, kept
current as jobs move, and the rows to write."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from kiln_scheduler.queue import QueuedJobState, QueueIndex

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def job(job_id: str, account: str = "a", pool: str = "p", **kw: object) -> QueuedJobState:
    return QueuedJobState(
        job_id=job_id,
        account_id=account,
        pool=pool,
        spec=b"",
        price_millicredits=0,
        status=str(kw.pop("status", "queued")),
        **kw,  # type: ignore[arg-type]
    )


def test_jobs_move_between_waiting_and_in_flight() -> None:
    index = QueueIndex()
    first, second = job("j1", seq=1), job("j2", account="b", seq=2)
    index.add(first)
    index.add(second)
    assert {j.job_id for j in index.waiting_in("p")} == {"j1", "j2"}
    index.update(first, status="dispatched", attempt=1)
    assert [j.job_id for j in index.waiting_in("p")] == ["j2"]
    assert index.in_flight_by_account("p") == {"a": 1}
    index.update(first, status="running")  # still one slot
    assert index.in_flight("p") == 1
    index.update(first, status="queued", ready_at=NOW)  # a retry waits again
    assert index.in_flight("p") == 0 and len(index.waiting_in("p")) == 2
    index.update(first, status="finished")
    assert index.get("j1") is None and index.in_flight("p") == 0
    new, changed = index.take_changes()
    assert {j.job_id for j in new} == {"j1", "j2"} and changed == []


def test_a_loaded_queue_keeps_only_unfinished_jobs_and_changes_are_tracked() -> None:
    index = QueueIndex()
    index.load(
        [
            job("w", seq=1),
            job("r", seq=2, status="running", dispatched_at=NOW),
            job("f", seq=3, status="finished"),
        ]
    )
    assert index.get("f") is None
    assert index.oldest_unstarted_dispatch("p") == (NOW, 0)
    index.update(index.jobs["r"], started_at=NOW)
    assert index.oldest_unstarted_dispatch("p") == (None, 1)
    new, changed = index.take_changes()
    assert new == [] and [j.job_id for j in changed] == ["r"]
    assert index.take_changes() == ([], [])


def test_waiting_jobs_past_their_deadline_come_out_once() -> None:
    index = QueueIndex()
    late = job("late", seq=1, deadline_at=NOW - timedelta(seconds=1))
    later = job("later", seq=2, deadline_at=NOW + timedelta(hours=1))
    running = job("run", seq=3, status="dispatched", deadline_at=NOW - timedelta(seconds=5))
    index.load([late, later, running])
    assert [j.job_id for j in index.past_deadline(NOW)] == ["late"]
    assert list(index.past_deadline(NOW)) == []  # running jobs: the timer checks them itself
