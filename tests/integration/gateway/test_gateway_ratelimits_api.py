"""Rate limits per API key and route class through HTTP, with the database store (the default,
shared by replicas) and the memory store, on a real SQLite database."""

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kiln_gateway.ratelimit_stores import DatabaseCounterStore, SharedCounterStore
from kiln_gateway.ratelimits import Quota, RateLimiter, window_start
from tests.integration.gateway.conftest import Gateway, bearer
from tests.integration.gateway.ratelimit_support import (
    LIMIT_HEADERS,
    frozen_clock,
    limited_gateway,
    new_key,
    replicas,
    share_one_exact_count,
    share_the_count_at_each_sync,
)

pytestmark = pytest.mark.integration


@pytest.fixture(params=["database", "memory"])
def limited(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Gateway]:
    with limited_gateway(tmp_path, request.param) as running:
        yield running


def create_request(gw: Gateway, key: dict[str, str]) -> httpx.Response:
    # A creating POST with a body that fails validation: it counts, and needs no pipeline.
    return gw.client.post("/jobs", json={"model": 1}, headers=key)


def test_the_default_store_is_shared_through_the_database(gateway: Gateway) -> None:
    assert isinstance(gateway.state.rate_limiter.store, SharedCounterStore)


def test_reads_count_down_exactly_and_the_n_plus_first_is_429(limited: Gateway) -> None:
    key = new_key(limited)
    for i in range(5):
        response = limited.client.get("/models", headers=key)
        assert response.status_code == 200
        assert response.headers["X-RateLimit-Limit"] == "5"
        assert response.headers["X-RateLimit-Remaining"] == str(4 - i)
        assert response.headers["X-RateLimit-Reset"] == "30"
        assert "Retry-After" not in response.headers
    refused = limited.client.get("/models", headers=key)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "RATE_LIMITED" and error["request_id"]
    assert refused.headers["Retry-After"] == "30"
    assert refused.headers["X-RateLimit-Limit"] == "5"
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    assert refused.headers["X-RateLimit-Reset"] == "30"
    assert refused.headers["X-Request-Id"] == error["request_id"]


def test_creates_have_their_own_budget_and_errors_carry_the_headers(limited: Gateway) -> None:
    key = new_key(limited)
    for i in range(3):
        response = create_request(limited, key)
        assert response.status_code == 422  # the request was bad, and still counted
        assert response.headers["X-RateLimit-Limit"] == "3"
        assert response.headers["X-RateLimit-Remaining"] == str(2 - i)
    assert create_request(limited, key).status_code == 429
    # Reads are a separate budget.
    read = limited.client.get("/models", headers=key)
    assert read.status_code == 200
    assert read.headers["X-RateLimit-Remaining"] == "4"
    # A 404 of a read route carries the headers too.
    missing = limited.client.get("/jobs/job_" + "0" * 32, headers=key)
    assert missing.status_code == 404
    assert missing.headers["X-RateLimit-Remaining"] == "3"


def test_sandbox_keys_have_their_own_limits(limited: Gateway) -> None:
    key = new_key(limited, sandbox=True)
    codes = [limited.client.get("/models", headers=key).status_code for _ in range(8)]
    assert codes == [200] * 7 + [429]
    assert create_request(limited, key).headers["X-RateLimit-Limit"] == "4"


def test_keys_count_apart_even_in_one_account(limited: Gateway) -> None:
    account = limited.create_account("ada@example.com")
    first = bearer(limited.create_key(account["id"])["secret"])
    second = bearer(limited.create_key(account["id"])["secret"])
    for _ in range(5):
        limited.client.get("/models", headers=first)
    assert limited.client.get("/models", headers=first).status_code == 429
    assert limited.client.get("/models", headers=second).headers["X-RateLimit-Remaining"] == "4"


def test_the_next_window_starts_afresh(limited: Gateway) -> None:
    key = new_key(limited)
    for _ in range(6):
        limited.client.get("/models", headers=key)
    assert limited.client.get("/models", headers=key).status_code == 429
    frozen_clock(limited, window_start(time.time(), 60) + 60.0)
    fresh = limited.client.get("/models", headers=key)
    assert fresh.status_code == 200
    assert fresh.headers["X-RateLimit-Remaining"] == "4"
    assert fresh.headers["X-RateLimit-Reset"] == "60"


def test_routes_without_an_api_key_carry_no_limit_headers(limited: Gateway) -> None:
    account = limited.create_account("ada@example.com")
    session = bearer(limited.login("ada@example.com"))
    for response in (
        limited.client.get("/admin/accounts", headers=bearer(limited.settings.admin_token)),
        limited.client.get("/keys", headers=session),
        limited.client.get("/files/not-a-token"),
        limited.client.get("/models", headers=bearer("sk_live_" + "x" * 43)),  # unknown key
        limited.client.get("/models"),
    ):
        assert not any(h in response.headers for h in LIMIT_HEADERS), response.request.url
    # An unknown or missing key is refused before it is counted: it spends nobody's budget.
    key = bearer(limited.create_key(account["id"])["secret"])
    assert limited.client.get("/models", headers=key).headers["X-RateLimit-Remaining"] == "4"


def test_a_streaming_or_explicit_response_gets_the_headers(limited: Gateway) -> None:
    # POST /jobs returns a JSONResponse itself (202), which dependencies cannot decorate:
    # the headers come from the middleware.
    key = new_key(limited)
    response = limited.client.post(
        "/jobs",
        json={"model": "kiln/prompt-to-image", "input": {"prompt": "a lighthouse", "seed": 1}},
        headers=key,
    )
    assert response.status_code in (202, 402, 422), response.text
    assert response.headers["X-RateLimit-Limit"] == "3"
    assert response.headers["X-RateLimit-Remaining"] == "2"


def test_replicas_share_the_count_at_each_sync(tmp_path: Path) -> None:
    """The default store writes no row per request: each replica counts at once and adds its
    hits to the shared row every `rate_limit_sync_s`, learning the others' as it does."""
    with replicas(tmp_path, "database") as (one, two):
        share_the_count_at_each_sync(one, two)


def test_replicas_counting_per_request_share_one_exact_count(tmp_path: Path) -> None:
    with replicas(tmp_path, "database-per-request") as (one, two):
        share_one_exact_count(one, two)


def test_replicas_with_the_memory_store_count_each_on_their_own(tmp_path: Path) -> None:
    with replicas(tmp_path, "memory") as (one, two):
        key = new_key(one)
        for _ in range(5):
            one.client.get("/models", headers=key)
        assert one.client.get("/models", headers=key).status_code == 429
        assert two.client.get("/models", headers=key).status_code == 200  # N per replica


def test_concurrent_hits_on_the_database_store_are_exact(gateway: Gateway) -> None:
    limiter = RateLimiter(DatabaseCounterStore(lambda: gateway.state.runtime.engine))
    quota = Quota(30, 3600)

    async def burst() -> list[int]:
        decisions = await asyncio.gather(*(limiter.hit("burst", quota) for _ in range(50)))
        return [d.count for d in decisions]

    counts = gateway.client.portal.call(burst)  # type: ignore[union-attr]
    assert sorted(counts) == list(range(1, 51))


def test_concurrent_requests_get_exactly_n_answers(limited: Gateway) -> None:
    key = new_key(limited)

    async def burst() -> list[int]:
        transport = httpx.ASGITransport(app=limited.app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver/api/v1"
        ) as client:
            responses = await asyncio.gather(
                *(client.get("/models", headers=key) for _ in range(12))
            )
        return [r.status_code for r in responses]

    codes = limited.client.portal.call(burst)  # type: ignore[union-attr]
    assert sorted(codes) == [200] * 5 + [429] * 7
