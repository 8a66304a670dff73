"""Gateways with small rate limits and a frozen clock, for the rate-limit tests on SQLite
(test_gateway_ratelimits_api.py) and PostgreSQL (test_gateway_ratelimits_postgres.py)."""

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def new_key(gw: Gateway, email: str = "ada@example.com", sandbox: bool = False) -> dict[str, str]:
    account = gw.create_account(email)
    return bearer(gw.create_key(account["id"], sandbox=sandbox)["secret"])


def sync(replica: Gateway) -> None:
    store = replica.state.rate_limiter.store
    assert isinstance(store, SharedCounterStore)
    replica.client.portal.call(store.sync)  # type: ignore[union-attr]
