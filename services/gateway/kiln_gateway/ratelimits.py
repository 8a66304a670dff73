"""Rate limits: fixed-window counters per API key and route class, and the login throttle.

Every request made with an API key counts against one of two budgets of its key:
`create` (every POST, e.g. `POST /jobs`, cancel, webhook endpoints; except `POST /jobs/quote`,
which only reads) or `read` (everything else). Windows are fixed and aligned on the epoch
(`window_s`, 60 s by default), so every replica agrees where a window starts and ends.

The counters live behind `CounterStore` (`ratelimit_stores.py`): in the gateway's database,
shared by every replica (the default), or in this process.

The limit headers reach every response of a limited request (success, error, streaming) through
`RateLimitHeaders`, a pure ASGI middleware that adds what the request left in its scope.
"""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kiln_gateway.config import GatewaySettings
from kiln_gateway.errors import ApiError
from kiln_gateway.ratelimit_stores import (
    CounterStore,
    DatabaseCounterStore,
    MemoryCounterStore,
    SharedCounterStore,
)
from kiln_gateway.tables import ApiKey
from kiln_runtime.db import Database

RouteClass = Literal["create", "read"]
StoreKind = Literal["database", "memory"]

# POSTs made with an API key that create nothing: they count as reads.
READ_ONLY_POSTS = frozenset({"/api/v1/jobs/quote"})

# Where a request leaves the headers that `RateLimitHeaders` adds to its response.
SCOPE_HEADERS = "kiln.rate_limit_headers"


class RateLimited(ApiError):
    status, code = 429, "RATE_LIMITED"


@dataclass(frozen=True)
class Quota:
    limit: int
    window_s: int


@dataclass(frozen=True)
class Decision:
    """One request's place in its window."""

    limit: int
    count: int  # requests in this window, this one included
    reset_after_s: float  # until the window ends

    @property
    def allowed(self) -> bool:
        return self.count <= self.limit

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.count)

    @property
    def reset_s(self) -> int:
        """Whole seconds until the window ends (at least 1: never "retry now" too early)."""
        return max(1, math.ceil(self.reset_after_s))

    def headers(self) -> dict[str, str]:
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_s),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.reset_s)
        return headers


def window_start(now: float, window_s: int) -> int:
    return int(now // window_s) * window_s


class RateLimiter:
    """Fixed-window limits over a `CounterStore`. `clock` is wall time (epoch seconds), so that
    replicas agree on windows; tests replace it to stay inside one window."""

    def __init__(self, store: CounterStore, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    async def hit(self, bucket: str, quota: Quota, amount: int = 1) -> Decision:
        """Count a request in `bucket` (`amount` -1 takes one back); the decision says whether
        the count is within `quota`."""
        now = self.clock()
        start = window_start(now, quota.window_s)
        key = f"{bucket}:{quota.window_s}"
        count = await self.store.hit(key, start, quota.window_s, amount)
        return Decision(quota.limit, count, start + quota.window_s - now)

    async def peek(self, bucket: str, quota: Quota) -> Decision:
        """Where `bucket` stands, without counting anything."""
        now = self.clock()
        start = window_start(now, quota.window_s)
        count = await self.store.count(f"{bucket}:{quota.window_s}", start)
        return Decision(quota.limit, count, start + quota.window_s - now)

    async def clear(self, bucket: str, quota: Quota) -> None:
        start = window_start(self.clock(), quota.window_s)
        await self.store.clear(f"{bucket}:{quota.window_s}", start)


def make_rate_limiter(
    settings: GatewaySettings, engine: Callable[[], AsyncEngine], database: Callable[[], Database]
) -> RateLimiter:
    store: CounterStore
    if settings.rate_limit_store == "memory":
        store = MemoryCounterStore()
    elif settings.rate_limit_store == "database-per-request":
        store = DatabaseCounterStore(engine)
    else:
        store = SharedCounterStore(database, sync_s=settings.rate_limit_sync_s)
    return RateLimiter(store)


# ------------------------------------------------------------------------- API keys


def route_class(method: str, route_path: str) -> RouteClass:
    """`create` for a POST that makes or changes something, `read` for everything else."""
    if method.upper() == "POST" and route_path not in READ_ONLY_POSTS:
        return "create"
    return "read"


def key_quota(settings: GatewaySettings, sandbox: bool, kind: RouteClass) -> Quota:
    limits = {
        (False, "create"): settings.rate_limit_live_create,
        (False, "read"): settings.rate_limit_live_read,
        (True, "create"): settings.rate_limit_sandbox_create,
        (True, "read"): settings.rate_limit_sandbox_read,
    }
    return Quota(limits[(sandbox, kind)], settings.rate_limit_window_s)


def _route_path(request: Request) -> str:
    route = request.scope.get("route")
    return str(getattr(route, "path_format", None) or getattr(route, "path", request.url.path))


async def limit_api_key(
    request: Request, settings: GatewaySettings, limiter: RateLimiter, key: ApiKey
) -> Decision:
    """Count this request against its key's budget for its route class; 429 when over."""
    kind = route_class(request.method, _route_path(request))
    decision = await limiter.hit(f"key:{key.id}:{kind}", key_quota(settings, key.sandbox, kind))
    set_response_headers(request, decision.headers())
    if not decision.allowed:
        raise RateLimited(
            f"Too many {kind} requests for this key: {decision.limit} per "
            f"{settings.rate_limit_window_s} s. Retry after {decision.reset_s} s."
        )
    return decision


# ------------------------------------------------------------------------- response headers


def set_response_headers(request: Request, headers: dict[str, str]) -> None:
    request.scope.setdefault(SCOPE_HEADERS, {}).update(headers)


class RateLimitHeaders:
    """Adds the headers a request left under `SCOPE_HEADERS` to its response, whatever made
    the response (a route's return value, a `Response`, a stream, or an error handler)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = scope.get(SCOPE_HEADERS)
                if extra:
                    headers = MutableHeaders(scope=message)
                    for name, value in extra.items():
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)
