"""Gateways with small rate limits and a frozen clock, for the rate-limit tests on SQLite
(test_gateway_ratelimits_api.py) and PostgreSQL (test_gateway_ratelimits_postgres.py)."""

import contextlib
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kiln_crypto import new_secrets_key
from kiln_gateway.ratelimit_stores import SharedCounterStore
from kiln_gateway.ratelimits import window_start
from tests.integration.gateway.conftest import (
    Gateway,
    bearer,
    gateway_without_kafka,
    make_settings,
)

LIMITS = {
    "rate_limit_live_read": 5,
    "rate_limit_live_create": 3,
    "rate_limit_sandbox_read": 7,
    "rate_limit_sandbox_create": 4,
}
LIMIT_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


def frozen_clock(gw: Gateway, at: float) -> None:
    gw.state.rate_limiter.clock = lambda: at


def window_middle() -> float:
    return window_start(time.time(), 60) + 30.0


@contextlib.contextmanager
def limited_gateway(tmp_path: Path, store: str, **extra: Any) -> Iterator[Gateway]:
    settings = make_settings(tmp_path, rate_limit_store=store, **LIMITS, **extra)
    with gateway_without_kafka(settings) as running:
        frozen_clock(running, window_middle())
        yield running


@contextlib.contextmanager
def replicas(tmp_path: Path, store: str, **extra: Any) -> Iterator[tuple[Gateway, Gateway]]:
    """Two replicas of one deployment (one database, session key and keyring), their clocks
    frozen in one window, though a minute may turn while they start."""
    deployment = {
        "session_signing_key": secrets.token_urlsafe(32),
        "secrets_keys": new_secrets_key(),
        **extra,
    }
    with (
        limited_gateway(tmp_path, store, **deployment) as one,
        limited_gateway(tmp_path, store, **deployment) as two,
    ):
        at = window_middle()
        frozen_clock(one, at)
        frozen_clock(two, at)
        yield one, two


def new_key(gw: Gateway, email: str = "ada@example.com", sandbox: bool = False) -> dict[str, str]:
    account = gw.create_account(email)
    return bearer(gw.create_key(account["id"], sandbox=sandbox)["secret"])


def sync(replica: Gateway) -> None:
    store = replica.state.rate_limiter.store
    assert isinstance(store, SharedCounterStore)
    replica.client.portal.call(store.sync)  # type: ignore[union-attr]


def share_the_count_at_each_sync(one: Gateway, two: Gateway) -> None:
    """Two replicas with the default store (their clocks frozen in one window): each counts
    at once and learns the other's hits at each sync."""
    key = new_key(one)
    first = [one.client.get("/models", headers=key) for _ in range(3)]
    assert [r.headers["X-RateLimit-Remaining"] for r in first] == ["4", "3", "2"]
    sync(one)
    sync(two)
    assert two.client.get("/models", headers=key).headers["X-RateLimit-Remaining"] == "1"
    sync(two)
    sync(one)
    assert one.client.get("/models", headers=key).headers["X-RateLimit-Remaining"] == "0"
    assert one.client.get("/models", headers=key).status_code == 429
    sync(one)
    sync(two)
    assert two.client.get("/models", headers=key).status_code == 429


def share_one_exact_count(one: Gateway, two: Gateway) -> dict[str, str]:
    """Two replicas counting per request: one exact count between them; returns the key."""
    key = new_key(one)
    remaining = [
        replica.client.get("/models", headers=key).headers["X-RateLimit-Remaining"]
        for replica in (one, two, one, two, one)
    ]
    assert remaining == ["4", "3", "2", "1", "0"]
    assert two.client.get("/models", headers=key).status_code == 429
    assert one.client.get("/models", headers=key).status_code == 429
    return key
