"""The scheduler's decisions, as pure functions."""

from collections.abc import Sequence
from dataclasses import dataclass

ACTIVE_STATUSES = ("dispatched", "running")


@dataclass(frozen=True)
class Waiting:
    job_id: str
    account_id: str
    seq: int


def choose_dispatches(waiting: Sequence[Waiting], in_flight: int, capacity: int) -> list[str]:
    """Which waiting jobs of one pool to dispatch now, oldest first, up to the free capacity.

    First come, first served for now: weighted fairness across accounts and per-account
    concurrency limits replace this ordering (issue 5) without changing the callers.
    """
    free = max(capacity - in_flight, 0)
    ordered = sorted(waiting, key=lambda w: w.seq)
    return [w.job_id for w in ordered[:free]]


def queue_position(waiting: Sequence[Waiting], job_id: str) -> int:
    ordered = sorted(waiting, key=lambda w: w.seq)
    for index, w in enumerate(ordered, start=1):
        if w.job_id == job_id:
            return index
    raise KeyError(job_id)
