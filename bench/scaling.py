"""Item 6: item 3's sustained throughput with 1, 2 and 4 inference workers and with 2 instances
of each consumer service (one at a time), on the shared bench stack, to show which stage bounds
the pipeline. Each configuration is compared with the one-of-each configuration (ratio =
speed-up); the CPU each process used during the run goes into the limits.

Runs last: it changes the shared stack's instance counts (and puts them back to one each)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bench.context import BenchContext
from bench.cpu import stack_cpu_meter
from bench.kiln_stack import KilnBenchStack
from bench.results import Measurement
from bench.sustained import SustainedRun, sustained
from bench.throughput import body_maker

BENCH = "scaling"
SERVICES = ("gateway", "billing", "scheduler", "inference", "notifier")


@dataclass(frozen=True)
class Config:
    label: str
    instances: Mapping[str, int]


BASE = Config("one of each", {})


def configs(ctx: BenchContext) -> list[Config]:
    full = [
        Config("inference ×2", {"inference": 2}),
        Config("inference ×4", {"inference": 4}),
        Config("gateway ×2", {"gateway": 2}),
        Config("billing ×2", {"billing": 2}),
        Config("scheduler ×2", {"scheduler": 2}),
        Config("notifier ×2", {"notifier": 2}),
    ]
    return ctx.size([Config("inference ×2", {"inference": 2})], full)


def apply(stack: KilnBenchStack, config: Config) -> None:
    """Scale every service to the configuration's count (1 unless it names another)."""
    for name in SERVICES:
        stack.local.scale(name, config.instances.get(name, 1))


def jobs_urls(stack: KilnBenchStack) -> list[str]:
    """Every gateway instance's job URL: the load is spread over them as a balancer would."""
    local = stack.local
    return [
        f"{local.service_url('gateway', instance)}/api/v1/jobs"
        for instance in local.service_instances("gateway")
    ]


def measure(ctx: BenchContext, stack: KilnBenchStack, config: Config) -> list[SustainedRun]:
    window, duration_s, warmup_s = ctx.size((4, 3.0, 1.0), (64, 20.0, 5.0))
    receiver = ctx.receiver()
    keys = [account.sandbox_key for account in stack.accounts]
    runs: list[SustainedRun] = []
    for repeat in range(ctx.repeats):
        with stack_cpu_meter(stack.local) as cpu:
            result = asyncio.run(
                sustained(
                    jobs_urls(stack),
                    keys,
                    receiver,
                    body_maker(receiver),
                    window=window,
                    duration_s=duration_s,
                    warmup_s=warmup_s,
                )
            )
        runs.append(result)
        ctx.echo(f"scaling: {config.label} run {repeat + 1}: {result}")
        ctx.report.note_limit(BENCH, f"{config.label} run {repeat + 1}: {cpu.describe()}")
    return runs


def run(ctx: BenchContext) -> None:
    stack = ctx.kiln()
    try:
        apply(stack, BASE)
        base = measure(ctx, stack, BASE)
        ctx.report.add([_measurement(BASE, base, [])])
        for config in configs(ctx):
            apply(stack, config)
            ctx.report.add([_measurement(config, measure(ctx, stack, config), base)])
    finally:
        apply(stack, BASE)


def _measurement(
    config: Config, runs: Sequence[SustainedRun], base: Sequence[SustainedRun]
) -> Measurement:
    return Measurement(
        BENCH,
        f"zero-delay sandbox jobs/s, {config.label}",
        "jobs/s",
        [r.jobs_per_s for r in runs],
        BASE.label if base else "",
        [r.jobs_per_s for r in base],
        better="higher",
        note=", ".join(
            f"p50 {1000 * r.p50_s:.0f} ms, {r.missing} missing, {r.refused} refused" for r in runs
        ),
    )
