"""When to retry a request and how long to wait first (pure; the transports do the waiting).

- Retried: no answer at all (connection refused, reset, timeout) and the answers 408, 429, 502,
  503 and 504. A request that may already have acted (an answer was lost, or a proxy gave up
  waiting) is retried only when repeating it is harmless: reads, cancels, and creations that
  carry an ``Idempotency-Key`` the server honours. Other requests are retried only when the
  server surely did not act: the connection was never made, or it answered 429.
- The wait doubles from ``initial_delay`` up to ``max_delay`` with "equal jitter" (half fixed,
  half random) so that many clients retrying at once spread out; a ``Retry-After`` the server
  sent takes precedence (capped by ``max_retry_after``).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

RETRYABLE_STATUSES = frozenset({408, 429, 502, 503, 504})
# Answers that say the server refused the request before acting on it.
REFUSED_STATUSES = frozenset({429})


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """``Retry-After`` (seconds or an HTTP date) in seconds; None when absent or unreadable."""
    lowered = {k.lower(): v for k, v in headers.items()}
    value = lowered.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if seconds != seconds or seconds < 0:  # NaN or in the past
        return 0.0
    return seconds


def never_connected(error: Exception) -> bool:
    """Whether the request surely never reached the server."""
    return isinstance(error, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 3
    initial_delay: float = 0.5
    max_delay: float = 8.0
    max_retry_after: float = 60.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def backoff(self, retry: int) -> float:
        """The jittered wait before retry number ``retry`` (1-based)."""
        ceiling = min(self.max_delay, self.initial_delay * 2.0 ** (retry - 1))
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)

    def retry_status(self, status: int, *, replay_safe: bool) -> bool:
        if replay_safe:
            return status in RETRYABLE_STATUSES
        return status in REFUSED_STATUSES

    def retry_error(self, error: Exception, *, replay_safe: bool) -> bool:
        if not isinstance(error, httpx.TransportError):
            return False
        if isinstance(error, httpx.UnsupportedProtocol | httpx.ProxyError):
            return False
        return replay_safe or never_connected(error)

    def delay(self, retry: int, response: httpx.Response | None) -> float | None:
        """How long to wait before retry ``retry``; None when the server asks for a wait
        longer than ``max_retry_after`` (then the caller gets the error at once)."""
        if response is not None:
            asked = retry_after_seconds(response.headers)
            if asked is not None:
                if asked > self.max_retry_after:
                    return None
                return float(asked)
        return self.backoff(retry)
