"""What the gateway process holds between requests."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from kiln_crypto import SecretsKeyring
from kiln_gateway.config import GatewaySettings
from kiln_gateway.keys.callers import CallerCache, LastUsed
from kiln_gateway.ratelimits import RateLimiter, make_rate_limiter
from kiln_runtime.blobs import BlobStore
from kiln_runtime.catalog import Catalog
from kiln_runtime.job_object import FileLinks
from kiln_runtime.service import ServiceRuntime
from kiln_runtime.url_guard import CachingResolver


class Waiter:
    """One request waiting for news of a key; `latest` is what the news said (for a job: the
    job as the read model's committed batch left it)."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.latest: Any = None

    async def wait(self, timeout_s: float) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                await self.event.wait()
        except TimeoutError:
            return False
        return True


class Waiters:
    """Requests waiting for an event about a key (a job id, a grant id) in this process.

    A hint to wake up early: the consumer of another replica may take the event, so a waiter
    also reads the database itself (jobs/endpoints.py says how often)."""

    def __init__(self) -> None:
        self._waiting: dict[str, list[Waiter]] = defaultdict(list)

    def register(self, key: str) -> Waiter:
        waiter = Waiter()
        self._waiting[key].append(waiter)
        return waiter

    def release(self, key: str, waiter: Waiter) -> None:
        waiting = self._waiting.get(key)
        if waiting and waiter in waiting:
            waiting.remove(waiter)
            if not waiting:
                del self._waiting[key]

    def notify(self, key: str, latest: Any = None) -> None:
        for waiter in self._waiting.get(key, ()):
            waiter.latest = latest
            waiter.event.set()


@dataclass
class GatewayState:
    settings: GatewaySettings
    runtime: ServiceRuntime
    catalog: Catalog
    blobs: BlobStore
    # Seals the webhook signing secrets this service stores and announces (KILN_SECRETS_KEYS).
    keyring: SecretsKeyring
    waiters: Waiters = field(default_factory=Waiters)
    # URL checks at submit resolve each host at most every few seconds.
    resolver: CachingResolver = field(default_factory=CachingResolver)
    # Rate-limit counters (ratelimits.py), shared through the database or per process.
    rate_limiter: RateLimiter = field(init=False)
    callers: CallerCache = field(init=False)
    last_used: LastUsed = field(init=False)

    def __post_init__(self) -> None:
        self.rate_limiter = make_rate_limiter(
            self.settings, lambda: self.runtime.db.async_engine, lambda: self.runtime.db
        )
        self.callers = CallerCache(self.runtime, self.settings.api_key_cache_s)
        self.last_used = LastUsed(self.runtime, self.settings.last_used_flush_s)

    @property
    def links(self) -> FileLinks:
        return FileLinks(
            public_url=self.settings.public_url,
            signing_key=self.settings.files_signing_key,
            ttl_s=self.settings.files_url_ttl_s,
        )
