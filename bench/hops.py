"""Hops per job (issue 11, item 4): per zero-delay sandbox job, how many events the services
produced, how many deliveries they consumed, and how many write transactions and SQL statements
each service ran.

Method: the bench stack's counters (`kiln_events_produced_total`, `kiln_events_consumed_total`,
`kiln_db_transactions_total{kind="write"}`, `kiln_db_statements_total`, from each service's
/metrics) are read, then JOBS zero-delay sandbox jobs with a webhook are submitted at RATE jobs/s
(a steady rate well below saturation: a batch then holds about one job's events, the dearest
case per job), every terminal webhook is awaited, the pipeline is let go quiet, and the counters
are read again. Each figure is the difference over JOBS. Background work in that span (timers,
the rate-limit sync, the last-used flush, outbox pruning) is counted too, spread over the jobs.
The issue's goal for the whole pipeline: at most 7 events / 10 deliveries / 15 write
transactions per job (from about 9 / 16 / 32).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import httpx

from bench.context import BenchContext
from bench.kiln_stack import KilnBenchStack, sandbox_job
from bench.loadgen import new_session
from bench.results import Measurement
from bench.submit_latency import wait_drained

BENCH = "hops"
SERVICES = ("gateway", "billing", "scheduler", "inference", "notifier")


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        labels_text, _, value = line[len(name) + 1 :].rpartition("} ")
        labels = {}
        for part in labels_text.split('",'):
            key, _, val = part.partition('="')
            labels[key.strip()] = val.rstrip('"')
        out.append((labels, float(value)))
    return out


def counters(stack: KilnBenchStack) -> dict[str, dict[str, float]]:
    """Per service: produced, consumed, write transactions, statements (totals so far), and
    `produced:<type>` / `consumed:<type>` per event type."""
    found: dict[str, dict[str, float]] = {}
    for service in SERVICES:
        text = httpx.get(f"{stack.local.service_url(service)}/metrics", timeout=10).text
        by_type: dict[str, float] = defaultdict(float)
        for kind, name in (
            ("produced", "kiln_events_produced_total"),
            ("consumed", "kiln_events_consumed_total"),
        ):
            for labels, value in _samples(text, name):
                by_type[f"{kind}:{labels.get('event_type', '?')}"] += value
        found[service] = {
            **by_type,
            "produced": sum(v for _l, v in _samples(text, "kiln_events_produced_total")),
            "consumed": sum(v for _l, v in _samples(text, "kiln_events_consumed_total")),
            "writes": sum(
                v
                for labels, v in _samples(text, "kiln_db_transactions_total")
                if labels.get("kind") == "write"
            ),
            "statements": sum(v for _l, v in _samples(text, "kiln_db_statements_total")),
        }
    return found


async def submit_at_rate(
    stack: KilnBenchStack, webhook_url: str, jobs: int, rate: float
) -> list[str]:
    keys = [a.sandbox_key for a in stack.accounts]
    body = sandbox_job(0.0, webhook_url)
    ids: list[str] = []
    started = time.monotonic()
    async with new_session() as session:

        async def one(index: int) -> None:
            await asyncio.sleep(max(started + index / rate - time.monotonic(), 0))
            headers = {"Authorization": f"Bearer {keys[index % len(keys)]}"}
            async with session.post(stack.jobs_url, json=body, headers=headers) as answer:
                data = await answer.json(content_type=None)
                if answer.status == 202:
                    ids.append(str(data["data"]["id"]))

        await asyncio.gather(*(one(i) for i in range(jobs)))
    return ids


def by_type(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]], service: str, jobs: int
) -> str:
    """ "produced job.dispatched 1.00, ...; consumed credits.reserved 1.00, ..." per job."""
    parts: dict[str, list[str]] = {"produced": [], "consumed": []}
    for key in sorted(after[service]):
        kind, _, event_type = key.partition(":")
        if not event_type:
            continue
        delta = (after[service][key] - before[service].get(key, 0.0)) / max(jobs, 1)
        if delta >= 0.005:
            parts[kind].append(f"{event_type} {delta:.2f}")
    return "; ".join(f"{kind} {', '.join(items) or 'nothing'}" for kind, items in parts.items())


def run(ctx: BenchContext) -> None:
    stack = ctx.kiln()
    receiver = ctx.receiver()
    jobs: int = ctx.size(20, 300)
    rate: float = ctx.size(10.0, 20.0)
    per_job: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for repeat in range(ctx.repeats):
        wait_drained(stack, 120.0)
        time.sleep(2.0)  # let timers and flushes of the last run settle
        before = counters(stack)
        ids = asyncio.run(submit_at_rate(stack, receiver.url, jobs, rate))
        arrived = receiver.wait_for(ids, timeout_s=ctx.size(60.0, 300.0))
        wait_drained(stack, 120.0)
        time.sleep(2.0)  # the last webhook's records and their events
        after = counters(stack)
        done = len(arrived)
        ctx.echo(f"hops: repeat {repeat + 1}: {done}/{len(ids)} jobs webhooked")
        for service in SERVICES:
            for key in ("produced", "consumed", "writes", "statements"):
                delta = after[service][key] - before[service][key]
                per_job[service][key].append(delta / max(done, 1))
        for key in ("produced", "consumed", "writes", "statements"):
            per_job["all"][key].append(sum(per_job[s][key][-1] for s in SERVICES))
        if repeat == 0:
            for service in SERVICES:
                ctx.report.note_limit(BENCH, f"{service}: {by_type(before, after, service, done)}")
    names = {
        "produced": ("events produced", "events"),
        "consumed": ("deliveries consumed", "deliveries"),
        "writes": ("write transactions", "txns"),
        "statements": ("SQL statements", "statements"),
    }
    measurements = []
    for key, (label, unit) in names.items():
        for service in ("all", *SERVICES):
            measurements.append(
                Measurement(
                    BENCH,
                    f"{label} per job: {service}",
                    unit,
                    per_job[service][key],
                    note=f"{jobs} zero-delay sandbox jobs at {rate:g}/s",
                )
            )
    ctx.report.add(measurements)
