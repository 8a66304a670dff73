"""What the gateway process holds between requests."""

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field

from kiln_gateway.config import GatewaySettings
from kiln_gateway.ratelimits import RateLimiter, make_rate_limiter
from kiln_runtime.blobs import BlobStore
from kiln_runtime.catalog import Catalog
from kiln_runtime.job_object import FileLinks
from kiln_runtime.service import ServiceRuntime


class Waiters:
    """Requests waiting for an event about a key (a job id, a grant id) in this process.

    Only a hint to wake up early: callers always re-read the database, so a replica that did
    not consume the event still answers correctly once its read model catches up.
    """

    def __init__(self) -> None:
        self._events: dict[str, list[asyncio.Event]] = defaultdict(list)

    def register(self, key: str) -> asyncio.Event:
        event = asyncio.Event()
        self._events[key].append(event)
        return event

    def release(self, key: str, event: asyncio.Event) -> None:
        waiting = self._events.get(key)
        if waiting and event in waiting:
            waiting.remove(event)
            if not waiting:
                del self._events[key]

    def notify(self, key: str) -> None:
        for event in self._events.get(key, []):
            event.set()


@dataclass
class GatewayState:
    settings: GatewaySettings
    runtime: ServiceRuntime
    catalog: Catalog
    blobs: BlobStore
    waiters: Waiters = field(default_factory=Waiters)
    # Rate-limit counters (ratelimits.py), in the database or this process per the settings.
    rate_limiter: RateLimiter = field(init=False)

    def __post_init__(self) -> None:
        self.rate_limiter = make_rate_limiter(self.settings, lambda: self.runtime.engine)

    @property
    def links(self) -> FileLinks:
        return FileLinks(
            public_url=self.settings.public_url,
            signing_key=self.settings.files_signing_key,
            ttl_s=self.settings.files_url_ttl_s,
        )
