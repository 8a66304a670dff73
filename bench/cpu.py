"""CPU used by named groups of processes while a load runs (psutil), to say which process a
benchmark's load kept busy, and how busy the whole machine was."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import psutil

from bench.footprint import group_processes, stack_processes

BENCH_CLIENT = "bench client"


def _busy_seconds(times: Any) -> float:
    return float(times.user + times.system + getattr(times, "softirq", 0.0))


@dataclass
class CpuMeter:
    """`with CpuMeter({"gateway": [pid], ...}) as cpu: ...load...` → `cpu.percent[name]` (100 =
    one core busy for the whole span) and `cpu.machine_cores` (every core of the box: 2.0 on a
    2-core machine means it had nothing left).

    A group counts its processes and all their descendants (Triton's server and Python stubs
    are children of the PyTriton process), except the names in `alone`, counted without
    descendants (the bench's own process: the stacks it started are its children). A process
    that exits during the span loses its time."""

    groups: Mapping[str, Sequence[int]]
    alone: frozenset[str] = frozenset()
    percent: dict[str, float] = field(default_factory=dict)
    machine_cores: float = float("nan")
    _start: dict[str, float] = field(default_factory=dict)
    _machine_start: float = 0.0
    _started_at: float = 0.0

    def _cpu_seconds(self) -> dict[str, float]:
        used: dict[str, float] = {}
        for name, pids in self.groups.items():
            if name in self.alone:
                processes = []
                for pid in pids:
                    try:
                        processes.append(psutil.Process(pid))
                    except psutil.Error:
                        continue
            else:
                processes = group_processes(pids)
            total = 0.0
            for process in processes:
                try:
                    total += _busy_seconds(process.cpu_times())
                except psutil.Error:
                    continue
            used[name] = total
        return used

    def __enter__(self) -> CpuMeter:
        self._start = self._cpu_seconds()
        self._machine_start = _busy_seconds(psutil.cpu_times())
        self._started_at = time.monotonic()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        wall = max(time.monotonic() - self._started_at, 1e-9)
        end = self._cpu_seconds()
        self.percent = {
            name: 100 * (end[name] - self._start[name]) / wall
            for name in end
            if name in self._start
        }
        self.machine_cores = (_busy_seconds(psutil.cpu_times()) - self._machine_start) / wall

    def describe(self, top: int | None = None) -> str:
        """ "machine 1.93 of 2 cores busy; gateway 92%, kafka 40%, ..." (busiest first)."""
        busiest = sorted(self.percent.items(), key=lambda item: -item[1])[:top]
        parts = ", ".join(f"{name} {value:.0f}%" for name, value in busiest)
        return f"machine {self.machine_cores:.2f} of {psutil.cpu_count()} cores busy; {parts}"


def stack_cpu_meter(local: Any, *, with_bench_client: bool = True) -> CpuMeter:
    """A CpuMeter of every process of a running LocalStack (each component's process group)
    and, by default, of this process (the load generator and the webhook receiver)."""
    groups: dict[str, Sequence[int]] = dict(stack_processes(local))
    if with_bench_client:
        groups[BENCH_CLIENT] = [os.getpid()]
    return CpuMeter(groups, alone=frozenset({BENCH_CLIENT}))
