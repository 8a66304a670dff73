"""Item 3: sustained end-to-end throughput of zero-delay sandbox jobs (submit → reserve →
dispatch → Triton → capture → webhook) against the same steps as a Celery application on Redis
(bench/baselines/celery_pipeline), both calling the same Triton `sandbox` model, one after the
other on the same machine, alternating within each repeat.

It also takes item 5's footprint under load (RSS of each process while the load runs) and,
once, a py-spy profile of Kiln's services under the same load (what limits the number). The
profile has a load span of its own, between Kiln's first measured run and Celery's: five
samplers take CPU from the services they sample, and Celery's run has none, so a profile inside
a measured span would lower Kiln's number alone."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass

from bench.baselines.celery_pipeline.launcher import CeleryBaseline
from bench.context import BenchContext
from bench.cpu import BENCH_CLIENT, CpuMeter
from bench.footprint import RssSampler, RssSummary, rss_measurements, stack_processes
from bench.kiln_stack import sandbox_job
from bench.profiling import Profile, record
from bench.receiver import WebhookReceiver
from bench.results import Measurement
from bench.sustained import SustainedRun, sustained

BENCH = "throughput"
SERVICES = ("gateway", "billing", "scheduler", "inference", "notifier")
BASELINE = "Celery + Redis"


@dataclass
class Sizes:
    window: int  # jobs in flight
    duration_s: float  # measured span (the issue asks for at least 60 s)
    warmup_s: float
    profile_s: float


def sizes(ctx: BenchContext) -> Sizes:
    return ctx.size(Sizes(4, 3.0, 1.0, 2.0), Sizes(64, 60.0, 5.0, 20.0))


def body_maker(receiver: WebhookReceiver) -> Callable[[int], dict[str, object]]:
    body = sandbox_job(0.0, receiver.url)
    return lambda _index: body


def measure(
    jobs_url: str,
    keys: Sequence[str],
    receiver: WebhookReceiver,
    groups: dict[str, list[int]],
    size: Sizes,
    *,
    pipeline: Sequence[str],
    bystanders: dict[str, list[int]] | None = None,
) -> tuple[SustainedRun, dict[str, RssSummary], str, float]:
    """One sustained run with its RSS samples, CPU shares and the CPU ms per job of the
    `pipeline` groups (the processes that do a job's work). `bystanders` are measured for the
    shares only: processes that run beside the pipeline but are not part of it."""
    cpu_groups = {**groups, **(bystanders or {}), BENCH_CLIENT: [os.getpid()]}
    with RssSampler(groups) as sampler, CpuMeter(cpu_groups, frozenset({BENCH_CLIENT})) as cpu:
        run = asyncio.run(load(jobs_url, keys, receiver, size, size.duration_s))
    # The meter spans the warm-up too, when the rate was the same: cores busy ÷ jobs/s.
    cores = sum(cpu.percent.get(name, 0.0) for name in pipeline) / 100
    ms_per_job = 1000 * cores / run.jobs_per_s if run.jobs_per_s else float("nan")
    return run, sampler.summary(), cpu.describe(), ms_per_job


def load(
    jobs_url: str, keys: Sequence[str], receiver: WebhookReceiver, size: Sizes, duration_s: float
) -> Coroutine[None, None, SustainedRun]:
    """`size.window` jobs in flight for the warm-up and then `duration_s`."""
    return sustained(
        jobs_url,
        keys,
        receiver,
        body_maker(receiver),
        window=size.window,
        duration_s=duration_s,
        warmup_s=size.warmup_s,
    )


def profile_under_load(
    jobs_url: str,
    keys: Sequence[str],
    receiver: WebhookReceiver,
    pids: dict[str, int],
    size: Sizes,
) -> dict[str, Profile]:
    """py-spy profiles of `pids` under the measured runs' load, in a span of its own that no
    number comes from."""
    profiles: dict[str, Profile] = {}

    def profile() -> None:
        profiles.update(record(pids, size.profile_s))

    profiler = threading.Timer(size.warmup_s, profile)
    profiler.start()
    # Load until the samplers are done: they stop `profile_s` after they attach, which may take
    # a few seconds on a busy machine.
    asyncio.run(load(jobs_url, keys, receiver, size, size.profile_s + 5.0))
    profiler.join()
    return profiles


def run(ctx: BenchContext) -> None:
    size = sizes(ctx)
    stack = ctx.kiln()
    receiver = ctx.receiver()
    kiln_keys = [account.sandbox_key for account in stack.accounts]
    kiln_runs: list[SustainedRun] = []
    celery_runs: list[SustainedRun] = []
    kiln_cpu: list[float] = []
    celery_cpu: list[float] = []
    # Celery's run calls Kiln's Triton, so Triton counts for both; the rest of the Kiln stack
    # idles beside Celery's run (it is measured and shown, not counted for Celery).
    kiln_groups = stack_processes(stack.local)
    kiln_rss: list[dict[str, RssSummary]] = []
    celery_rss: list[dict[str, RssSummary]] = []
    baseline = CeleryBaseline(ctx.workdir / "celery", stack.triton_grpc_url, echo=ctx.echo)
    baseline.start()
    try:
        celery_keys = [baseline.create_account(10**9) for _ in range(len(kiln_keys))]
        celery_groups = {name: [pid] for name, pid in baseline.processes().items()}
        for repeat in range(ctx.repeats):
            kiln_run, rss, shares, ms_per_job = measure(
                stack.jobs_url, kiln_keys, receiver, kiln_groups, size, pipeline=list(kiln_groups)
            )
            kiln_runs.append(kiln_run)
            kiln_cpu.append(ms_per_job)
            kiln_rss.append(rss)
            ctx.echo(f"throughput: Kiln {kiln_run}")
            ctx.report.note_limit(BENCH, f"Kiln run {repeat + 1}: {shares}")
            if ctx.config.profile and repeat == 0:
                # Each service's process-group leader (stack_processes lists it first).
                leaders = {n: kiln_groups[n][0] for n in SERVICES if kiln_groups.get(n)}
                profiles = profile_under_load(stack.jobs_url, kiln_keys, receiver, leaders, size)
                for profile in profiles.values():
                    ctx.report.note_limit(BENCH, f"profile (py-spy) {profile.summary()}")
            celery_run, rss, shares, ms_per_job = measure(
                f"{baseline.url}/jobs",
                celery_keys,
                receiver,
                celery_groups,
                size,
                pipeline=[*celery_groups, "triton"],
                bystanders=kiln_groups,
            )
            celery_runs.append(celery_run)
            celery_cpu.append(ms_per_job)
            celery_rss.append(rss)
            ctx.echo(f"throughput: Celery {celery_run}")
            ctx.report.note_limit(BENCH, f"{BASELINE} run {repeat + 1}: {shares}")
    finally:
        baseline.stop()
    ctx.report.add(results(size, kiln_runs, celery_runs, kiln_cpu, celery_cpu))
    ctx.report.add(
        rss_measurements(
            "footprint",
            "RSS under load",
            kiln_rss,
            comparison=celery_rss,
            comparison_name=BASELINE,
        )
    )


def results(
    size: Sizes,
    kiln: Sequence[SustainedRun],
    celery: Sequence[SustainedRun],
    kiln_cpu: Sequence[float],
    celery_cpu: Sequence[float],
) -> list[Measurement]:
    where = f"{size.window} jobs in flight, {size.duration_s:.0f} s measured"

    def lost(runs: Sequence[SustainedRun]) -> str:
        return ", ".join(
            f"{r.completed} done/{r.failed} failed/{r.missing} missing/{r.refused} refused"
            for r in runs
        )

    return [
        Measurement(
            BENCH,
            f"zero-delay sandbox jobs/s ({where})",
            "jobs/s",
            [r.jobs_per_s for r in kiln],
            BASELINE,
            [r.jobs_per_s for r in celery],
            better="higher",
            note=f"Kiln runs: {lost(kiln)}; {BASELINE} runs: {lost(celery)}",
        ),
        Measurement(
            BENCH,
            f"submit → webhook p50 ({where})",
            "ms",
            [1000 * r.p50_s for r in kiln],
            BASELINE,
            [1000 * r.p50_s for r in celery],
        ),
        Measurement(
            BENCH,
            f"submit → webhook p99 ({where})",
            "ms",
            [1000 * r.p99_s for r in kiln],
            BASELINE,
            [1000 * r.p99_s for r in celery],
        ),
        Measurement(
            BENCH,
            f"CPU per job, Triton included, bench client not ({where})",
            "ms",
            list(kiln_cpu),
            BASELINE,
            list(celery_cpu),
            note="cores busy in the pipeline's processes over the run ÷ jobs/s; Kiln: Kafka, "
            "Triton and the five services; Celery + Redis: its API, worker, Redis and Triton",
        ),
    ]
