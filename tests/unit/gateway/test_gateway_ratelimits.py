"""Rate-limit logic: windows, decisions, headers, route classes, quotas, the memory store."""

import asyncio
from typing import Any

import pytest
from sqlalchemy.dialects import postgresql, sqlite

from kiln_gateway.config import GatewaySettings
from kiln_gateway.ratelimit_stores import MemoryCounterStore, increment_statement
from kiln_gateway.ratelimits import (
    Decision,
    Quota,
    RateLimiter,
    key_quota,
    route_class,
    window_start,
)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_windows_are_aligned_on_the_epoch() -> None:
    assert window_start(1_000_000_059.9, 60) == 1_000_000_020
    assert window_start(1_000_000_080.0, 60) == 1_000_000_080
    assert window_start(7.0, 5) == 5


def test_headers_count_down_and_429_adds_retry_after() -> None:
    within = Decision(limit=3, count=2, reset_after_s=12.2)
    assert within.allowed
    assert within.headers() == {
        "X-RateLimit-Limit": "3",
        "X-RateLimit-Remaining": "1",
        "X-RateLimit-Reset": "13",
    }
    over = Decision(limit=3, count=4, reset_after_s=0.01)
    assert not over.allowed
    assert over.headers()["X-RateLimit-Remaining"] == "0"
    assert over.headers()["Retry-After"] == "1"  # never "retry now" before the window ends


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/api/v1/jobs", "create"),
        ("POST", "/api/v1/jobs/{job_id}/cancel", "create"),
        ("POST", "/api/v1/webhooks", "create"),
        ("POST", "/api/v1/jobs/quote", "read"),
        ("GET", "/api/v1/jobs", "read"),
        ("GET", "/api/v1/jobs/{job_id}/events", "read"),
        ("DELETE", "/api/v1/webhooks/{endpoint_id}", "read"),
        ("get", "/api/v1/models", "read"),
    ],
)
def test_route_classes(method: str, path: str, expected: str) -> None:
    assert route_class(method, path) == expected


def test_default_quotas_are_design_md_s() -> None:
    settings = GatewaySettings()
    assert key_quota(settings, False, "create") == Quota(100, 60)
    assert key_quota(settings, False, "read") == Quota(600, 60)
    assert key_quota(settings, True, "create") == Quota(300, 60)
    assert key_quota(settings, True, "read") == Quota(1000, 60)


def test_quotas_follow_the_settings() -> None:
    settings = GatewaySettings(rate_limit_window_s=10, rate_limit_sandbox_read=7)
    assert key_quota(settings, True, "read") == Quota(7, 10)


async def test_the_n_plus_first_hit_in_a_window_is_refused_and_the_next_window_is_fresh() -> None:
    clock = Clock(1_000_000_020.0)
    limiter = RateLimiter(MemoryCounterStore(), clock)
    quota = Quota(3, 60)
    decisions = [await limiter.hit("key:a:read", quota) for _ in range(4)]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert decisions[-1].reset_s == 60
    clock.now += 59.5
    assert not (await limiter.hit("key:a:read", quota)).allowed
    assert (await limiter.peek("key:a:read", quota)).count == 5
    clock.now += 0.5  # the next window
    fresh = await limiter.hit("key:a:read", quota)
    assert fresh.allowed and fresh.remaining == 2 and fresh.reset_s == 60


async def test_buckets_and_quotas_count_apart() -> None:
    clock = Clock(1_000_000_020.0)
    limiter = RateLimiter(MemoryCounterStore(), clock)
    await limiter.hit("key:a:read", Quota(3, 60))
    assert (await limiter.hit("key:a:create", Quota(3, 60))).count == 1
    assert (await limiter.hit("key:b:read", Quota(3, 60))).count == 1
    assert (await limiter.hit("key:a:read", Quota(3, 10))).count == 1  # another window length


async def test_a_hit_can_be_taken_back_and_a_bucket_cleared() -> None:
    clock = Clock(1_000_000_020.0)
    limiter = RateLimiter(MemoryCounterStore(), clock)
    quota = Quota(5, 60)
    await limiter.hit("login", quota)
    await limiter.hit("login", quota)
    assert (await limiter.hit("login", quota, amount=-1)).count == 1
    await limiter.clear("login", quota)
    assert (await limiter.peek("login", quota)).count == 0


async def test_the_memory_store_counts_concurrent_hits_exactly() -> None:
    limiter = RateLimiter(MemoryCounterStore())
    quota = Quota(50, 3600)
    counts = await asyncio.gather(*(limiter.hit("k", quota) for _ in range(80)))
    assert sorted(d.count for d in counts) == list(range(1, 81))
    assert sum(d.allowed for d in counts) == 50


async def test_the_memory_store_forgets_ended_windows() -> None:
    store = MemoryCounterStore()
    await store.hit("k", 1_000_000_020, 60)
    await store.hit("other", 1_000_000_620, 60)
    assert await store.count("k", 1_000_000_020) == 0


@pytest.mark.parametrize("dialect", [sqlite.dialect(), postgresql.dialect()])
def test_the_database_increment_is_one_upsert_statement(dialect: Any) -> None:
    statement, params = increment_statement(dialect.name, "b", 0, 60, 1)
    assert params == {"bucket": "b", "start": 0, "amount": 1, "expires_at": 60, "added": 1}
    sql = " ".join(str(statement.compile(dialect=dialect)).split())
    assert sql.startswith("INSERT INTO rate_limit_windows")
    assert "ON CONFLICT (bucket, window_start) DO UPDATE SET hits = (rate_limit_windows.hits" in sql
    assert sql.endswith("RETURNING rate_limit_windows.hits") or sql.endswith("RETURNING hits")
