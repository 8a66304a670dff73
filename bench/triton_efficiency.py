"""Triton efficiency (issue item 4): jobs/s through Kiln versus the same Triton model driven
directly with `tritonclient`, at the same concurrency.

The model is the Triton `sandbox` model: batchable (dynamic batches of up to 8 requests, no added
queue delay) with a fixed per-batch cost (a batch waits out its longest `delay_ms` once, then
answers every request), on 8 instances. Every request asks for the same delay (DELAY_S).

Method, per repeat (the two sides alternate inside each repeat):

* Direct: CONCURRENCY asyncio tasks, each sending its next `sandbox` request with
  `tritonclient.grpc.aio` (kiln_inference.triton_client.infer_file: the same client, request
  and channel-per-URL as Kiln's inference worker) as soon as the last one answered, for the
  run's duration.
* Kiln: bench.sustained (as items 3 and 6): CONCURRENCY clients, each submitting a sandbox job
  with `{"delay_s": DELAY_S}` and a `webhook_url` (the bench's receiver), waiting for the job's
  terminal webhook, then submitting the next; the jobs are spread over the bench accounts. This
  keeps exactly CONCURRENCY jobs in flight from the user's side, as the direct run keeps
  CONCURRENCY requests in flight: the same concurrency. (A steady stream of submissions at a
  fixed rate would measure the pipeline at an offered rate, not at a concurrency.)
* Both: a warm-up, then jobs/s = answers (direct) or terminal webhooks (Kiln) that arrived
  within the measured span, over its length; p50 of the requests sent within it.

The ideal is min(CONCURRENCY, instances × max batch) / delay: each request in flight completes
once per delay when no stage but the model takes time.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.context import BenchContext
from bench.cpu import CpuMeter, stack_cpu_meter
from bench.kiln_stack import KilnBenchStack, sandbox_job
from bench.results import Measurement
from bench.stats import percentile
from bench.submit_latency import wait_drained
from bench.sustained import sustained
from kiln_inference.triton_client import TritonInferenceError, close_clients, infer_file
from kiln_modelhost.config import DEFAULT_SANDBOX_INSTANCES, ServerOptions
from kiln_runtime.catalog import load_catalog

BENCH = "triton"
DIRECT = "tritonclient direct"
MODEL = "kiln/prompt-to-image"
DELAY_S = 0.2


@dataclass
class DirectRun:
    """What the direct run completed, counted like bench.sustained counts Kiln's jobs."""

    completed: int = 0  # answers within the measured span
    failed: int = 0
    measured_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)  # of requests sent in the span
    errors: list[str] = field(default_factory=list)

    @property
    def per_s(self) -> float:
        return self.completed / self.measured_s if self.measured_s > 0 else 0.0


async def drive_triton(
    url: str,
    triton_model: str,
    request: dict[str, Any],
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
) -> DirectRun:
    """`concurrency` tasks calling Triton directly, each one request at a time, for warm-up +
    duration; requests per second answered within the measured span."""
    run = DirectRun(measured_s=duration_s)
    measure_from = time.monotonic() + warmup_s
    end = measure_from + duration_s

    async def client() -> None:
        while (sent := time.monotonic()) < end:
            try:
                await infer_file(url, triton_model, request, timeout_s=30.0)
            except TritonInferenceError as exc:
                run.failed += 1
                run.errors.append(exc.code)
                await asyncio.sleep(0.05)  # an error must not become a hot loop
                continue
            done = time.monotonic()
            if measure_from <= done <= end:
                run.completed += 1
            if sent >= measure_from:
                run.latencies_s.append(done - sent)

    try:
        await asyncio.gather(*(client() for _ in range(concurrency)))
    finally:
        await close_clients(url)
    return run


def sandbox_instances(stack: KilnBenchStack) -> int:
    value = stack.local.triton_env().get("KILN_SANDBOX_INSTANCES", "")
    return int(value) if value.strip() else DEFAULT_SANDBOX_INSTANCES


def _summary(errors: Sequence[str]) -> str:
    counts: dict[str, int] = {}
    for error in errors:
        counts[error] = counts.get(error, 0) + 1
    return ", ".join(f"{name} ×{n}" for name, n in sorted(counts.items()))


def run(ctx: BenchContext) -> None:
    stack = ctx.kiln()
    receiver = ctx.receiver()
    concurrency: int = ctx.size(4, 16)
    duration_s: float = ctx.size(3.0, 20.0)
    warmup_s: float = ctx.size(1.0, 3.0)
    drain_timeout_s: float = ctx.size(60.0, 300.0)

    catalog = load_catalog()
    entry = catalog.model(MODEL)
    if entry is None:
        raise RuntimeError(f"the catalog has no {MODEL}")
    triton_model = catalog.sandbox_triton_model
    # What Kiln's inference worker sends for a sandbox job of this model with delay_s = DELAY_S.
    request = {"kind": entry.kind, "delay_ms": round(DELAY_S * 1000), "outcome": "completed"}
    body = sandbox_job(DELAY_S, receiver.url)
    keys = [account.sandbox_key for account in stack.accounts]
    instances = sandbox_instances(stack)
    batch = ServerOptions().max_batch_size
    ideal = min(concurrency, instances * batch) / DELAY_S
    wait_drained(stack, drain_timeout_s)  # an earlier bench's tail must not load this one

    kiln_rate: list[float] = []
    direct_rate: list[float] = []
    kiln_p50: list[float] = []
    direct_p50: list[float] = []
    kiln_cpu = direct_cpu = ""
    problems: list[str] = []
    for repeat in range(ctx.repeats):
        ctx.echo(f"triton: repeat {repeat + 1}/{ctx.repeats}")
        triton_pid = stack.local.pid("triton")
        with CpuMeter({"triton": [triton_pid]} if triton_pid else {}) as cpu:
            direct = asyncio.run(
                drive_triton(
                    stack.triton_grpc_url,
                    triton_model,
                    request,
                    concurrency=concurrency,
                    duration_s=duration_s,
                    warmup_s=warmup_s,
                )
            )
        direct_cpu = cpu.describe()
        direct_rate.append(direct.per_s)
        direct_p50.append(1000 * percentile(direct.latencies_s, 50))
        ctx.echo(
            f"triton: direct, {concurrency} in flight: {direct.per_s:.1f}/s, "
            f"p50 {direct_p50[-1]:.0f} ms, {direct.failed} failed; CPU {direct_cpu}"
        )
        if direct.failed:
            problems.append(f"direct: {direct.failed} failed ({_summary(direct.errors)})")

        with stack_cpu_meter(stack.local) as cpu:
            kiln = asyncio.run(
                sustained(
                    stack.jobs_url,
                    keys,
                    receiver,
                    lambda _i: body,
                    window=concurrency,
                    duration_s=duration_s,
                    warmup_s=warmup_s,
                )
            )
        kiln_cpu = cpu.describe(top=5)
        kiln_rate.append(kiln.jobs_per_s)
        kiln_p50.append(1000 * kiln.p50_s)
        ctx.echo(
            f"triton: Kiln, {concurrency} in flight: {kiln.jobs_per_s:.1f}/s, "
            f"p50 {kiln_p50[-1]:.0f} ms, {kiln.refused} refused, {kiln.failed} failed, "
            f"{kiln.missing} missing; CPU {kiln_cpu}"
        )
        if kiln.refused or kiln.failed or kiln.missing:
            problems.append(
                f"Kiln: {kiln.refused} refused, {kiln.failed} failed, {kiln.missing} missing"
            )
        left, _ = wait_drained(stack, drain_timeout_s)
        if left:
            problems.append(f"{left} Kiln jobs still in flight {drain_timeout_s:.0f} s after a run")

    setup = (
        f"Triton `{triton_model}` model, {DELAY_S * 1000:.0f} ms per batch, {instances} instances, "
        f"batches of up to {batch}; {concurrency} requests (direct) or jobs (Kiln) in flight, "
        f"{duration_s:g} s measured after {warmup_s:g} s of warm-up."
    )
    ctx.report.add(
        [
            Measurement(
                BENCH,
                f"jobs/s at {concurrency} in flight",
                "jobs/s",
                kiln_rate,
                DIRECT,
                direct_rate,
                "higher",
                f"{setup} Ideal: min({concurrency}, {instances}×{batch}) / {DELAY_S:g} s = "
                f"{ideal:.0f}/s.",
            ),
            Measurement(
                BENCH,
                f"job time p50 at {concurrency} in flight",
                "ms",
                kiln_p50,
                DIRECT,
                direct_p50,
                "lower",
                f"Kiln: submit to terminal webhook; direct: the infer call. The model's own "
                f"time is {DELAY_S * 1000:.0f} ms.",
            ),
        ]
    )
    ctx.report.note_limit(
        BENCH,
        f"CPU during the Kiln run (100% = one core of {os.cpu_count()}): {kiln_cpu}; "
        f"during the direct run: {direct_cpu}. Ideal {ideal:.0f} jobs/s.",
    )
    for problem in problems:
        ctx.report.note_limit(BENCH, problem)
