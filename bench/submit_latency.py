"""Submit latency and throughput (issue item 1): `POST /api/v1/jobs`, credit decision included,
against a bare FastAPI endpoint that answers 202 on the same machine (the HTTP ceiling).

Method, per repeat (Kiln and the bare endpoint alternate inside each repeat, so that drift on
the machine hits both):

* Fixed offered rate: the Python open loop (bench.loadgen: requests timed from their due time)
  at 10, 20 and 200 jobs/s for 15 s each (smoke: 5/s for 2 s; 200 jobs/s is where the targets
  are set: p50 <= 15 ms, p99 <= 50 ms, no `pending` answer), zero-delay sandbox jobs spread over
  the bench accounts (request i uses account i % n, so the jobs land on every partition); then
  the same rate and body against the bare endpoint. Billing decides a sandbox job exactly like a
  live one (the same balance lock, reservation row and events), at price 0, so the answer
  includes the whole credit decision. Billing's own decision delay (submit → decision, from its
  `kiln_billing_decision_delay_seconds` histogram) over the same run is noted next to it.
* Saturation: a closed loop of 64 clients for 10 s (smoke: 8 for 2 s). Kiln: the Python closed
  loop over the bench accounts, because it reads each answer's `status` (wrk cannot tell a
  `queued` answer from a `pending` one, and gives one key, so one account and one partition, per
  run); at Kiln's rates the Python generator is far from its own limit (it drives the bare
  endpoint at about 2000/s). Bare endpoint: wrk with as many connections, because the Python
  generator, not the server, would be the limit there.
* Between Kiln runs the bench waits until `GET /jobs/count?status=pending,queued,running` is 0
  for every account, so that one run's tail does not load the next.

The gateway waits up to 2 s for billing's decision and then answers 202 `pending`; the share of
`pending` answers is reported, since a closed loop's accepted jobs/s is bounded by clients / 2 s
once the decisions lag (the answers then stop including the decision).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import median

import aiohttp
import httpx

from bench.baselines.bare_fastapi import BareFastAPI
from bench.context import BenchContext
from bench.cpu import CpuMeter, stack_cpu_meter
from bench.kiln_stack import KilnBenchStack, sandbox_job
from bench.loadgen import (
    LoadSummary,
    Outcome,
    Request,
    Sent,
    closed_loop,
    job_request,
    open_loop,
    summarize_load,
)
from bench.results import Measurement
from bench.wrk import saturate

BENCH = "submit"
BARE = "bare FastAPI"
IN_FLIGHT = "pending,queued,running"


# --- helpers shared with other benches ---------------------------------------------------------


def spread_jobs(url: str, api_keys: Sequence[str], body: Mapping[str, object]) -> Request:
    """A job request that uses key i % len(api_keys) for request i: every account, every
    partition."""
    payload = dict(body)
    senders = [job_request(url, key, lambda _i: payload) for key in api_keys]

    async def send(session: aiohttp.ClientSession, index: int) -> Outcome:
        return await senders[index % len(senders)](session, index)

    return send


def in_flight(stack: KilnBenchStack) -> int:
    """Jobs of the bench accounts that are not finished yet (pending, queued or running)."""
    total = 0
    with httpx.Client(timeout=30.0) as client:
        for account in stack.accounts:
            response = client.get(
                f"{stack.jobs_url}/count",
                params={"status": IN_FLIGHT},
                headers={"Authorization": f"Bearer {account.sandbox_key}"},
            )
            response.raise_for_status()
            total += int(response.json()["data"]["count"])
    return total


def wait_drained(stack: KilnBenchStack, timeout_s: float, poll_s: float = 0.5) -> tuple[int, float]:
    """Wait until no bench job is in flight (or the timeout); returns (left, seconds waited)."""
    started = time.monotonic()
    while True:
        left = in_flight(stack)
        waited = time.monotonic() - started
        if left == 0 or waited >= timeout_s:
            return left, waited
        time.sleep(poll_s)


def billing_decisions(stack: KilnBenchStack) -> tuple[float, float]:
    """(count, sum of seconds) of billing's sandbox decision delays so far, over its instances
    (its Prometheus histogram `kiln_billing_decision_delay_seconds`)."""
    count = total = 0.0
    for component in stack.local.service_components():
        if component.split("-")[0] != "billing":
            continue
        text = httpx.get(f"{stack.local.service_url(component)}/metrics", timeout=10.0).text
        for line in text.splitlines():
            if 'mode="sandbox"' not in line:
                continue
            if line.startswith("kiln_billing_decision_delay_seconds_count"):
                count += float(line.rsplit(" ", 1)[1])
            elif line.startswith("kiln_billing_decision_delay_seconds_sum"):
                total += float(line.rsplit(" ", 1)[1])
    return count, total


# --- the bench ---------------------------------------------------------------------------------


@dataclass
class KilnLoad:
    summary: LoadSummary
    pending_pct: float  # share of the 202 answers that were `pending` (no decision within 2 s)
    decided_per_s: float  # 202 answers that carried the decision, per second
    rejected: int  # answers that were not 2xx


def kiln_load(sent: Sequence[Sent]) -> KilnLoad:
    summary = summarize_load(sent)
    accepted = [s for s in sent if s.accepted and s.outcome is not None]
    pending = sum(
        1 for s in accepted if s.outcome is not None and s.outcome.job_status == "pending"
    )
    decided = len(accepted) - pending
    return KilnLoad(
        summary=summary,
        pending_pct=100 * pending / len(accepted) if accepted else float("nan"),
        decided_per_s=decided / summary.duration_s if summary.duration_s > 0 else 0.0,
        rejected=sum(1 for s in sent if s.outcome is not None and not s.accepted),
    )


def _line(label: str, summary: LoadSummary, extra: str = "") -> str:
    return (
        f"submit: {label}: {summary.accepted}/{summary.requests} accepted "
        f"({summary.accepted_per_s:.1f}/s), p50 {summary.p50_ms:.0f} ms, "
        f"p99 {summary.p99_ms:.0f} ms, {summary.errors} errors{extra}"
    )


def run(ctx: BenchContext) -> None:
    stack = ctx.kiln()
    rates: list[float] = ctx.size([5.0], [10.0, 20.0, 200.0])
    rate_duration_s: float = ctx.size(2.0, 15.0)
    clients: int = ctx.size(8, 64)
    saturation_s: float = ctx.size(2.0, 10.0)
    drain_timeout_s: float = ctx.size(60.0, 300.0)
    keys = [account.sandbox_key for account in stack.accounts]
    body = sandbox_job(0.0)
    kiln_request = spread_jobs(stack.jobs_url, keys, body)

    # The first requests of a fresh stack pay for connections and caches: not measured.
    asyncio.run(open_loop(kiln_request, 5.0, 1.0))
    wait_drained(stack, drain_timeout_s)

    per_rate: dict[float, dict[str, list[float]]] = {
        rate: {k: [] for k in ("k50", "k99", "kacc", "kpend", "b50", "b99", "bacc")}
        for rate in rates
    }
    sat: dict[str, list[float]] = {
        k: [] for k in ("k50", "k99", "kacc", "kpend", "kdec", "b50", "b99", "bacc")
    }
    drains: list[float] = []
    decision_ms: dict[float, list[float]] = {rate: [] for rate in rates}
    undrained: list[int] = []
    kiln_cpu = ""
    bare_cpu = ""
    problems: list[str] = []

    with BareFastAPI(ctx.workdir / "bare_fastapi.log") as bare:
        bare_request = job_request(bare.jobs_url, "bench", lambda _i: dict(body))
        asyncio.run(open_loop(bare_request, 20.0, 0.5))  # warm-up
        for repeat in range(ctx.repeats):
            ctx.echo(f"submit: repeat {repeat + 1}/{ctx.repeats}")
            for rate in rates:
                decisions_before = billing_decisions(stack)
                load = kiln_load(asyncio.run(open_loop(kiln_request, rate, rate_duration_s)))
                left, waited = wait_drained(stack, drain_timeout_s)
                decisions_after = billing_decisions(stack)
                decided = decisions_after[0] - decisions_before[0]
                if decided > 0:
                    decision_ms[rate].append(
                        1000 * (decisions_after[1] - decisions_before[1]) / decided
                    )
                ctx.echo(
                    _line(f"Kiln at {rate:g}/s", load.summary, f", {load.pending_pct:.0f}% pending")
                )
                if load.summary.errors or load.rejected:
                    problems.append(
                        f"at {rate:g}/s: {load.summary.errors} errors, {load.rejected} non-2xx"
                    )
                row = per_rate[rate]
                row["k50"].append(load.summary.p50_ms)
                row["k99"].append(load.summary.p99_ms)
                row["kacc"].append(load.summary.accepted_per_s)
                row["kpend"].append(load.pending_pct)
                drains.append(waited)
                undrained.append(left)
                base = summarize_load(asyncio.run(open_loop(bare_request, rate, rate_duration_s)))
                ctx.echo(_line(f"bare at {rate:g}/s", base))
                row["b50"].append(base.p50_ms)
                row["b99"].append(base.p99_ms)
                row["bacc"].append(base.accepted_per_s)

            with stack_cpu_meter(stack.local) as cpu:
                load = kiln_load(asyncio.run(closed_loop(kiln_request, clients, saturation_s)))
            kiln_cpu = cpu.describe()
            ctx.echo(
                _line(
                    f"Kiln saturation ({clients} clients)",
                    load.summary,
                    f", {load.pending_pct:.0f}% pending, decided {load.decided_per_s:.1f}/s; "
                    f"CPU {kiln_cpu}",
                )
            )
            if load.summary.errors or load.rejected:
                problems.append(
                    f"at saturation: {load.summary.errors} errors, {load.rejected} non-2xx"
                )
            sat["k50"].append(load.summary.p50_ms)
            sat["k99"].append(load.summary.p99_ms)
            sat["kacc"].append(load.summary.accepted_per_s)
            sat["kpend"].append(load.pending_pct)
            sat["kdec"].append(load.decided_per_s)
            left, waited = wait_drained(stack, drain_timeout_s)
            drains.append(waited)
            undrained.append(left)

            assert bare.pid is not None
            with CpuMeter({"bare FastAPI": [bare.pid]}) as cpu:
                result = saturate(
                    bare.jobs_url,
                    json.dumps(body),
                    api_key="bench",
                    connections=clients,
                    duration_s=saturation_s,
                )
            bare_cpu = cpu.describe()
            ctx.echo(
                f"submit: bare saturation (wrk, {clients} connections): "
                f"{result.accepted_per_s:.0f}/s, p50 {result.p50_ms:.1f} ms, "
                f"p99 {result.p99_ms:.1f} ms, {result.socket_errors} socket errors; "
                f"CPU {bare_cpu}"
            )
            sat["b50"].append(result.p50_ms)
            sat["b99"].append(result.p99_ms)
            sat["bacc"].append(result.accepted_per_s)

    rate_note = (
        f"Python open loop, {rate_duration_s:g} s per run, zero-delay sandbox jobs over "
        f"{len(keys)} accounts; billing decides sandbox jobs like live ones, at price 0. "
        "Latency from each request's due time to its answer."
    )
    measurements: list[Measurement] = []
    for rate in rates:
        row = per_rate[rate]
        at = f"at {rate:g} jobs/s"
        measurements += [
            Measurement(BENCH, f"p50 {at}", "ms", row["k50"], BARE, row["b50"], "lower", rate_note),
            Measurement(BENCH, f"p99 {at}", "ms", row["k99"], BARE, row["b99"], "lower", rate_note),
            Measurement(
                BENCH, f"accepted {at}", "jobs/s", row["kacc"], BARE, row["bacc"], "higher"
            ),
            Measurement(
                BENCH,
                f"pending answers {at}",
                "%",
                row["kpend"],
                better="lower",
                note="202 `pending`: billing's decision did not reach the gateway in its 2 s wait",
            ),
        ]
    sat_note = (
        f"closed loop of {clients} clients for {saturation_s:g} s: Kiln with the Python "
        f"generator over {len(keys)} accounts (reads each answer's status), the bare endpoint "
        f"with wrk ({clients} connections; the Python generator would be its limit)."
    )
    measurements += [
        Measurement(
            BENCH,
            "accepted at saturation",
            "jobs/s",
            sat["kacc"],
            BARE,
            sat["bacc"],
            "higher",
            sat_note + " Once decisions lag past the gateway's 2 s wait, Kiln answers `pending` "
            "and accepted/s is clients / answer time: it grows with the clients and measures the "
            "accept path, not the decisions (see `decided answers`).",
        ),
        Measurement(BENCH, "p50 at saturation", "ms", sat["k50"], BARE, sat["b50"], "lower"),
        Measurement(BENCH, "p99 at saturation", "ms", sat["k99"], BARE, sat["b99"], "lower"),
        Measurement(
            BENCH,
            "pending answers at saturation",
            "%",
            sat["kpend"],
            better="lower",
            note="202 `pending`: no decision reached the gateway within its 2 s wait",
        ),
        Measurement(
            BENCH,
            "decided answers at saturation",
            "jobs/s",
            sat["kdec"],
            better="higher",
            note="202 answers that carried billing's decision (not `pending`), per second",
        ),
    ]
    ctx.report.add(measurements)
    ctx.report.note_limit(
        BENCH,
        f"Kiln at saturation: CPU (100% = one core of {os.cpu_count()}) {kiln_cpu}; "
        f"bare FastAPI under wrk: {bare_cpu}.",
    )
    ctx.report.note_limit(
        BENCH,
        f"drains between Kiln runs took {min(drains):.1f}–{max(drains):.1f} s"
        + (f"; {max(undrained)} jobs were still in flight after one" if any(undrained) else ""),
    )
    for rate in rates:
        if decision_ms[rate]:
            ctx.report.note_limit(
                BENCH,
                f"at {rate:g} jobs/s billing decided in {median(decision_ms[rate]):.0f} ms on "
                f"average after the submit (its histogram), while the gateway's answer took "
                f"{median(per_rate[rate]['k50']):.0f} ms (p50): the rest is the way back, "
                "billing's outbox relay, Kafka and the gateway's read-model consumer.",
            )
    for problem in problems:
        ctx.report.note_limit(BENCH, f"Kiln {problem}")
