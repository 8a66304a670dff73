"""Item 2, pipeline overhead: for a model that takes a known fixed time, the time from submit to
the webhook arriving, minus the model's own time, p50/p99 at several offered rates (50 jobs/s is
where the targets are set: p50 <= 25 ms, p99 <= 100 ms).

Method. Sandbox jobs whose model sleeps exactly `MODEL_DELAY_S` per batch (Triton's `sandbox`
model waits out a batch's longest delay once; every job here asks for the same delay), each with
a webhook to the bench's receiver, sent by an open loop at a fixed rate over the bench
accounts (request i uses account i % accounts: jobs are keyed by account on 6 partitions). A job's
overhead is its terminal webhook's arrival − the moment its POST was due − MODEL_DELAY_S,
all on this process's monotonic clock. After each run has every webhook (or the timeout: a
missing webhook is counted and reported, never dropped silently), a sample of the run's jobs is
read back (`GET /jobs/{id}`, once the run is over so the reads do not load it) and their
created_at / started_at / completed_at split the overhead into stages:

    submit:        POST due → created_at              (client, HTTP, auth, the gateway's insert)
    to worker:     created_at → started_at            (credit reservation in billing, the
                                                       scheduler's queue and dispatch, the
                                                       worker's claim: four Kafka hops)
    inference:     started_at → completed_at − D      (the Triton call around the model's
                                                       sleep, storing the encrypted result)
    notification:  completed_at → webhook arrival     (outbox relay, Kafka, notifier, POST)

The server's timestamps are wall-clock times of the same machine, compared with the monotonic
arrivals through one time.time() − time.monotonic() offset taken at the start of each run.

Before the measured runs, a warm-up of 16 jobs at once (not measured; see WARMUP_JOBS).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import aiohttp

from bench.context import BenchContext
from bench.kiln_stack import KilnBenchStack, sandbox_job
from bench.loadgen import Outcome, Request, Sent, job_request, new_session, open_loop
from bench.receiver import Arrival, WebhookReceiver
from bench.results import Measurement
from bench.stats import percentile

BENCH = "overhead"
MODEL_DELAY_S = 0.5
# Seconds to wait, after the last POST, for the last webhook of a run.
WEBHOOK_TIMEOUT_S = 120.0
# Jobs sent within one second before the measured runs, not measured: the first sandbox batch
# of each of Triton's 8 sandbox instances takes seconds more than its delay on a fresh stack
# (seen: 6.7–9.3 s for a 0.5 s delay), and the services' first jobs warm their paths too.
WARMUP_JOBS = 16
STAGES = ("submit", "to worker", "inference", "notification")
STAGE_HELP = {
    "submit": "POST due → created_at",
    "to worker": "created_at → started_at: reserve, queue, dispatch, claim",
    "inference": "started_at → completed_at, minus the model's time",
    "notification": "completed_at → webhook arrival",
}


@dataclass
class RunResult:
    rate: float
    sent: list[Sent]
    overheads_s: list[float]  # one per job with a job.completed webhook
    rejected: int  # POSTs not answered 2xx (or not answered)
    missing: int  # accepted jobs whose terminal webhook did not come
    failed: int  # terminal webhooks other than job.completed
    stages_s: dict[str, list[float]] = field(default_factory=dict)  # sampled jobs only
    sampled: int = 0

    @property
    def lost(self) -> int:
        return self.rejected + self.missing + self.failed


def spread_request(stack: KilnBenchStack, webhook_url: str, delay_s: float) -> Request:
    """POST a sandbox job of `delay_s` with a webhook; request i uses account i % accounts."""
    requests = [
        job_request(
            stack.jobs_url, account.sandbox_key, lambda _i: sandbox_job(delay_s, webhook_url)
        )
        for account in stack.accounts
    ]

    async def send(session: aiohttp.ClientSession, index: int) -> Outcome:
        return await requests[index % len(requests)](session, index)

    return send


def _parse_time(value: object) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


async def _read_jobs(
    stack: KilnBenchStack,
    wanted: Sequence[tuple[int, str]],
    concurrency: int = 8,
    patience_s: float = 30.0,
) -> dict[str, dict[str, object]]:
    """GET each (request index, job id) with its account's key; job id → job object. The
    gateway learns of a job's end from Kafka on its own, so it may show a job as running
    after its webhook came: such jobs are read again until they have completed_at (or
    `patience_s` passed)."""
    found: dict[str, dict[str, object]] = {}
    limit = asyncio.Semaphore(concurrency)

    async def read(session: aiohttp.ClientSession, index: int, job_id: str) -> None:
        key = stack.accounts[index % len(stack.accounts)].sandbox_key
        async with limit:
            async with session.get(
                f"{stack.jobs_url}/{job_id}", headers={"Authorization": f"Bearer {key}"}
            ) as response:
                if response.status == 200:
                    found[job_id] = dict((await response.json())["data"])

    deadline = time.monotonic() + patience_s
    pending = list(wanted)
    async with new_session(concurrency) as session:
        while pending:
            await asyncio.gather(*(read(session, index, job) for index, job in pending))
            pending = [(i, job) for i, job in pending if not found.get(job, {}).get("completed_at")]
            if not pending or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.5)
    return found


def stage_breakdown(
    stack: KilnBenchStack,
    completed: Sequence[tuple[Sent, Arrival]],
    wall_offset: float,
    delay_s: float,
    sample: int,
) -> dict[str, list[float]]:
    """Stage durations (s) of up to `sample` jobs spread evenly over the run."""
    if not completed or sample <= 0:
        return {}
    step = max(1, len(completed) // sample)
    chosen = list(completed[::step])[:sample]
    jobs = asyncio.run(
        _read_jobs(stack, [(s.index, s.outcome.job_id) for s, _ in chosen if s.outcome])
    )
    stages: dict[str, list[float]] = {name: [] for name in STAGES}
    for sent, arrival in chosen:
        job = jobs.get(sent.outcome.job_id if sent.outcome else "")
        if job is None:
            continue
        created = _parse_time(job.get("created_at"))
        started = _parse_time(job.get("started_at"))
        finished = _parse_time(job.get("completed_at"))
        if created is None or started is None or finished is None:
            continue
        stages["submit"].append(created - (sent.due + wall_offset))
        stages["to worker"].append(started - created)
        stages["inference"].append(finished - started - delay_s)
        stages["notification"].append(arrival.at + wall_offset - finished)
    return stages


def run_once(
    stack: KilnBenchStack,
    hooks: WebhookReceiver,
    rate: float,
    duration_s: float,
    delay_s: float,
    sample: int,
) -> RunResult:
    request = spread_request(stack, hooks.url, delay_s)
    wall_offset = time.time() - time.monotonic()
    sent = asyncio.run(open_loop(request, rate, duration_s))
    accepted = [s for s in sent if s.accepted and s.outcome is not None and s.outcome.job_id]
    ids = [s.outcome.job_id for s in accepted if s.outcome is not None]
    arrivals = hooks.wait_for(ids, WEBHOOK_TIMEOUT_S)
    completed: list[tuple[Sent, Arrival]] = []
    failed = 0
    for s in accepted:
        arrival = arrivals.get(s.outcome.job_id) if s.outcome is not None else None
        if arrival is None:
            continue
        if arrival.type == "job.completed":
            completed.append((s, arrival))
        else:
            failed += 1
    result = RunResult(
        rate=rate,
        sent=sent,
        overheads_s=[a.at - s.due - delay_s for s, a in completed],
        rejected=len(sent) - len(accepted),
        missing=len(ids) - len(arrivals),
        failed=failed,
    )
    result.stages_s = stage_breakdown(stack, completed, wall_offset, delay_s, sample)
    result.sampled = len(result.stages_s.get("submit", []))
    return result


def _ms(values: Sequence[float], q: float) -> float:
    return 1000 * percentile(values, q)


def run(ctx: BenchContext) -> None:
    rates: list[float] = ctx.size([5.0], [2.0, 5.0, 10.0, 20.0, 50.0])
    duration_s: float = ctx.size(2.0, 25.0)
    sample: int = ctx.size(10, 100)
    delay_s = MODEL_DELAY_S
    stack = ctx.kiln()
    hooks = ctx.receiver()
    warm = run_once(stack, hooks, WARMUP_JOBS, 1.0, delay_s, 0)
    ctx.echo(
        f"overhead: warm-up ({len(warm.sent)} jobs at once, not measured): overhead p50 "
        f"{_ms(warm.overheads_s, 50):.0f} ms, max {_ms(warm.overheads_s, 100):.0f} ms"
    )
    runs: dict[float, list[RunResult]] = {rate: [] for rate in rates}
    # Repeat-major: each repeat goes through every rate, so that a noisy minute of a busy
    # machine spreads over the rates instead of spoiling one of them.
    for repeat in range(ctx.repeats):
        for rate in rates:
            result = run_once(stack, hooks, rate, duration_s, delay_s, sample)
            runs[rate].append(result)
            stages = ", ".join(
                f"{name} {_ms(values, 50):.0f}"
                for name, values in result.stages_s.items()
                if values
            )
            ctx.echo(
                f"overhead: run {repeat + 1}/{ctx.repeats} at {rate:g} jobs/s: "
                f"{len(result.sent)} jobs, overhead p50 {_ms(result.overheads_s, 50):.0f} ms "
                f"p99 {_ms(result.overheads_s, 99):.0f} ms; rejected {result.rejected}, "
                f"failed {result.failed}, no webhook {result.missing}; "
                f"stage p50 ms ({result.sampled} jobs): {stages}"
            )
            time.sleep(1.0)  # let the stragglers' bookkeeping settle before the next rate
    ctx.report.add(measurements(runs, duration_s, delay_s))
    for limit in limits(runs, delay_s):
        ctx.report.note_limit(BENCH, limit)


def measurements(
    runs: dict[float, list[RunResult]], duration_s: float, delay_s: float
) -> list[Measurement]:
    out: list[Measurement] = []
    for rate, results in runs.items():
        jobs = len(results[0].sent) if results else 0
        note = (
            f"submit → terminal webhook − model time {delay_s:g} s; open loop {rate:g} jobs/s "
            f"for {duration_s:g} s ({jobs} jobs a run) spread over the bench accounts"
        )
        for q in (50, 99):
            out.append(
                Measurement(
                    bench=BENCH,
                    metric=f"overhead p{q} @ {rate:g} jobs/s (model {delay_s:g} s)",
                    unit="ms",
                    kiln=[_ms(r.overheads_s, q) for r in results],
                    note=note,
                )
            )
        for stage in STAGES:
            values = [_ms(r.stages_s.get(stage, []), 50) for r in results]
            sampled = [r.sampled for r in results]
            out.append(
                Measurement(
                    bench=BENCH,
                    metric=f"stage p50 @ {rate:g} jobs/s: {stage}",
                    unit="ms",
                    kiln=values,
                    note=f"{STAGE_HELP[stage]}; {min(sampled)}–{max(sampled)} jobs a run "
                    "read back after the run",
                )
            )
    repeats = max((len(results) for results in runs.values()), default=0)
    lost = [sum(rs[i].lost for rs in runs.values() if i < len(rs)) for i in range(repeats)]
    detail = "; ".join(
        f"{rate:g}/s: rejected {sum(r.rejected for r in rs)}, failed "
        f"{sum(r.failed for r in rs)}, no webhook {sum(r.missing for r in rs)}"
        for rate, rs in runs.items()
    )
    out.append(
        Measurement(
            bench=BENCH,
            metric="jobs without a job.completed webhook (all rates)",
            unit="jobs",
            kiln=[float(n) for n in lost],
            note=f"per run, summed over the rates; over all runs: {detail} (webhook timeout "
            f"{WEBHOOK_TIMEOUT_S:.0f} s)",
        )
    )
    return out


def limits(runs: dict[float, list[RunResult]], delay_s: float) -> list[str]:
    """Where the overhead goes at each rate (each stage's p50 over all runs' sampled jobs)."""
    lines: list[str] = []
    for rate, results in runs.items():
        overheads = [o for r in results for o in r.overheads_s]
        if not overheads:
            lines.append(f"{rate:g} jobs/s: no job completed")
            continue
        parts = []
        for stage in STAGES:
            values = [v for r in results for v in r.stages_s.get(stage, [])]
            if values:
                parts.append(f"{stage} {_ms(values, 50):.0f} (p99 {_ms(values, 99):.0f})")
        lines.append(
            f"{rate:g} jobs/s, model {delay_s:g} s: overhead p50 {_ms(overheads, 50):.0f} ms "
            f"(each stage's p50 in ms, which need not add up to it: {', '.join(parts)})"
        )
        lost = sum(r.lost for r in results)
        if lost:
            lines.append(
                f"{rate:g} jobs/s: {lost} job(s) without a job.completed webhook "
                f"(rejected {sum(r.rejected for r in results)}, failed "
                f"{sum(r.failed for r in results)}, no webhook within {WEBHOOK_TIMEOUT_S:.0f} s "
                f"{sum(r.missing for r in results)}): their overhead is not in the percentiles"
            )
    return lines
