"""Sustained end-to-end throughput: `window` clients, each submitting a job and waiting for its
terminal webhook before submitting the next, so exactly `window` jobs are in flight. Throughput
is the terminal webhooks that arrived per second in the measured span (after a warm-up), and
latency is submit → webhook. Used for Kiln and for the Celery baseline alike (item 3) and for
the scaling runs (item 6)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp

from bench.loadgen import new_session
from bench.receiver import WebhookReceiver
from bench.stats import percentile

WEBHOOK_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class SustainedRun:
    submitted: int
    refused: int  # answered but not accepted (4xx/5xx) or not answered
    completed: int  # terminal webhooks received, in the whole run
    failed: int  # of which job.failed or job.canceled
    missing: int  # accepted jobs whose webhook never came (within WEBHOOK_TIMEOUT_S)
    measured_s: float
    jobs_per_s: float  # terminal webhooks per second within the measured span
    p50_s: float  # submit → webhook, of jobs submitted within the measured span
    p99_s: float


async def sustained(
    jobs_url: str | Sequence[str],
    api_keys: Sequence[str],
    receiver: WebhookReceiver,
    body_for: Callable[[int], dict[str, object]],
    *,
    window: int,
    duration_s: float,
    warmup_s: float,
) -> SustainedRun:
    """Keep `window` jobs in flight for warm-up + duration; request i uses api_keys[i % n]
    (and, given several gateway URLs, jobs_url[i % m])."""
    urls = [jobs_url] if isinstance(jobs_url, str) else list(jobs_url)
    counter = iter(range(10**9))
    started = time.monotonic()
    measure_from = started + warmup_s
    end = measure_from + duration_s
    submitted = refused = missing = failed = 0
    latencies: list[float] = []
    arrivals: list[float] = []

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal submitted, refused, missing, failed
        while (due := time.monotonic()) < end:
            index = next(counter)
            headers = {"Authorization": f"Bearer {api_keys[index % len(api_keys)]}"}
            submitted += 1
            try:
                async with session.post(
                    urls[index % len(urls)], json=body_for(index), headers=headers
                ) as answer:
                    data = await answer.json(content_type=None) if answer.status < 300 else {}
                    status = answer.status
            except (aiohttp.ClientError, TimeoutError, ValueError):
                status, data = 0, {}
            job_id = str((data or {}).get("data", {}).get("id", ""))
            if status // 100 != 2 or not job_id:
                refused += 1
                await asyncio.sleep(0.05)  # an error must not become a hot loop
                continue
            arrival = await receiver.arrival(job_id, WEBHOOK_TIMEOUT_S)
            if arrival is None:
                missing += 1
                continue
            arrivals.append(arrival.at)
            if arrival.type != "job.completed":
                failed += 1
            if due >= measure_from:
                latencies.append(arrival.at - due)

    async with new_session(max(64, window)) as session:
        await asyncio.gather(*(client(session) for _ in range(window)))
    in_span = sum(1 for at in arrivals if measure_from <= at <= end)
    return SustainedRun(
        submitted=submitted,
        refused=refused,
        completed=len(arrivals),
        failed=failed,
        missing=missing,
        measured_s=duration_s,
        jobs_per_s=in_span / duration_s,
        p50_s=percentile(latencies, 50),
        p99_s=percentile(latencies, 99),
    )
