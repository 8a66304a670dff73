"""Python load generators over aiohttp: an open loop at a fixed offered rate and a closed loop
of N clients. Each request is timed from the moment it was *due*, not from when the generator
got round to sending it, so a generator or server falling behind shows up as latency instead of
silently lowering the rate (no coordinated omission)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiohttp

from bench.stats import percentile


@dataclass
class Outcome:
    """What one request answered: its HTTP status and, for a job, its id and status."""

    status: int
    job_id: str = ""
    job_status: str = ""


@dataclass
class Sent:
    index: int
    due: float  # time.monotonic() at which the request was due
    done: float  # time.monotonic() at which its answer was read
    outcome: Outcome | None  # None: a connection error or timeout
    error: str = ""

    @property
    def latency_s(self) -> float:
        return self.done - self.due

    @property
    def accepted(self) -> bool:
        return self.outcome is not None and 200 <= self.outcome.status < 300


# A request: given the session and the request's index, send it and read the answer.
Request = Callable[[aiohttp.ClientSession, int], Awaitable[Outcome]]


def new_session(connections: int = 512, timeout_s: float = 30.0) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    return aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)
    )


async def _timed(session: aiohttp.ClientSession, request: Request, index: int, due: float) -> Sent:
    try:
        outcome = await request(session, index)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Sent(index, due, time.monotonic(), None, f"{type(exc).__name__}: {exc}")
    return Sent(index, due, time.monotonic(), outcome)


async def open_loop(
    request: Request, rate_per_s: float, duration_s: float, *, connections: int = 512
) -> list[Sent]:
    """Send requests at `rate_per_s` for `duration_s`, whatever the answers take."""
    if rate_per_s <= 0 or duration_s <= 0:
        raise ValueError("rate and duration must be positive")
    count = max(1, round(rate_per_s * duration_s))
    interval = 1.0 / rate_per_s
    async with new_session(connections) as session:
        start = time.monotonic()
        tasks: list[asyncio.Task[Sent]] = []
        for index in range(count):
            due = start + index * interval
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_timed(session, request, index, due)))
        return list(await asyncio.gather(*tasks))


async def closed_loop(
    request: Request, concurrency: int, duration_s: float, *, connections: int = 512
) -> list[Sent]:
    """`concurrency` clients, each sending its next request when the last one answered."""
    if concurrency <= 0 or duration_s <= 0:
        raise ValueError("concurrency and duration must be positive")
    sent: list[Sent] = []
    counter = iter(range(10**9))

    async with new_session(max(connections, concurrency)) as session:
        end = time.monotonic() + duration_s

        async def client() -> None:
            while (now := time.monotonic()) < end:
                sent.append(await _timed(session, request, next(counter), now))

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return sent


@dataclass(frozen=True)
class LoadSummary:
    requests: int
    accepted: int
    errors: int
    duration_s: float
    p50_ms: float
    p99_ms: float

    @property
    def accepted_per_s(self) -> float:
        return self.accepted / self.duration_s if self.duration_s > 0 else 0.0


def summarize_load(sent: Sequence[Sent]) -> LoadSummary:
    """Latency percentiles of the accepted requests, and accepted requests per second over
    the span from the first due time to the last answer."""
    if not sent:
        return LoadSummary(0, 0, 0, 0.0, float("nan"), float("nan"))
    accepted = [s for s in sent if s.accepted]
    latencies = [1000 * s.latency_s for s in accepted]
    span = max(s.done for s in sent) - min(s.due for s in sent)
    return LoadSummary(
        requests=len(sent),
        accepted=len(accepted),
        errors=sum(1 for s in sent if s.outcome is None),
        duration_s=span,
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
    )


def job_request(url: str, api_key: str, body_for: Callable[[int], dict[str, object]]) -> Request:
    """A request that POSTs a job (`body_for(index)`) and reads its id and status."""
    headers = {"Authorization": f"Bearer {api_key}"}

    async def send(session: aiohttp.ClientSession, index: int) -> Outcome:
        async with session.post(url, json=body_for(index), headers=headers) as response:
            if response.status >= 300:
                await response.read()
                return Outcome(response.status)
            data = (await response.json()).get("data", {})
            return Outcome(response.status, str(data.get("id", "")), str(data.get("status", "")))

    return send
