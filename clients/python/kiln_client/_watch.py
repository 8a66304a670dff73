"""What following a job needs in both clients: deadlines and how a finished job answers."""

from __future__ import annotations

import time
from typing import TypeVar

from kiln_client.errors import JobCanceled, JobFailed
from kiln_client.models import JobBase

# The server sends a keep-alive every 15 s: a stream quiet for longer has died.
STREAM_READ_TIMEOUT = 35.0
POLL_INTERVAL_START = 0.5
POLL_INTERVAL_MAX = 2.0

J = TypeVar("J", bound=JobBase)  # type: ignore[type-arg]


class Deadline:
    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self._at = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> float:
        return float("inf") if self._at is None else self._at - time.monotonic()

    def passed(self) -> bool:
        return self.remaining() <= 0

    def bounded(self, seconds: float) -> float:
        """``seconds``, or less when the deadline comes sooner (never below a millisecond)."""
        return max(0.001, min(seconds, self.remaining()))


def finished_or_raise(job: J) -> J:
    """A completed job as is; a failed or canceled one as its typed error."""
    if job.status == "failed":
        raise JobFailed(job)
    if job.status == "canceled":
        raise JobCanceled(job)
    return job
