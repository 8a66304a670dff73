"""Resident memory of named groups of processes, sampled in a background thread (item 5).

    from bench.footprint import RssSampler, stack_processes

    sampler = RssSampler(stack_processes(stack.local))     # {"kafka": [pid, ...], ...}
    with sampler:                                          # start(); ...; stop()
        run_the_load()
    for name, rss in sampler.summary().items():
        print(name, rss.median_mib, rss.peak_mib, rss.processes)
    ctx.report.add(sampler.measurements("throughput", "RSS under load"))

A group is a name and the pids it starts from; every sample adds their children (recursively,
with psutil, looked up again at each sample: Triton's Python backend stubs come and go with
its models) and sums the resident set size (RSS) of the distinct processes, in MiB. A process
that exited is skipped; a name whose processes all exited gets no sample.

RSS summed over the processes of a group counts the pages they share (libpython, numpy, the
JVM's mapped jars, ...) once per process: for Triton's group (PyTriton, tritonserver and one
Python stub per model instance) that is an overestimate. `pss=True` also samples the
proportional set size (shared pages divided among their sharers, which adds up honestly), but
reading /proc/<pid>/smaps_rollup costs a few ms per process: leave it off under load.
"""

from __future__ import annotations

import math
import statistics
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import psutil

from bench.results import Measurement

MIB = 1024 * 1024


@dataclass(frozen=True)
class RssSummary:
    """One group's samples: the median and peak of its summed RSS (MiB), the median of its
    summed PSS (MiB; NaN unless sampled with pss=True), how many samples, and the most
    processes it had at once."""

    median_mib: float
    peak_mib: float
    pss_median_mib: float
    samples: int
    processes: int


def group_processes(pids: Iterable[int]) -> list[psutil.Process]:
    """The live processes of `pids` and all their descendants, each once."""
    found: dict[int, psutil.Process] = {}
    for pid in pids:
        try:
            process = psutil.Process(pid)
            members = [process, *process.children(recursive=True)]
        except psutil.Error:
            continue
        for member in members:
            found.setdefault(member.pid, member)
    return list(found.values())


class RssSampler:
    """Samples every `interval_s` (one sample at once on start, one on stop) the summed RSS of
    each named group of processes (see the module's docstring).

    Thread-safe to read while it runs: `summary()`, `samples()` and `measurements()` give what
    was sampled so far. `start()` may only be called once per sampler."""

    def __init__(
        self,
        groups: Mapping[str, Sequence[int]],
        interval_s: float = 0.5,
        *,
        pss: bool = False,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.groups = {name: list(pids) for name, pids in groups.items()}
        self.interval_s = interval_s
        self.pss = pss
        self._rss: dict[str, list[float]] = {name: [] for name in self.groups}
        self._pss: dict[str, list[float]] = {name: [] for name in self.groups}
        self._counts: dict[str, int] = dict.fromkeys(self.groups, 0)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------- sampling

    def sample_once(self) -> dict[str, float]:
        """Take one sample now (also recorded); returns the RSS in MiB of each group that has
        a live process."""
        rss_now: dict[str, float] = {}
        pss_now: dict[str, float] = {}
        counts: dict[str, int] = {}
        for name, pids in self.groups.items():
            rss = pss = 0
            alive = 0
            for process in group_processes(pids):
                try:
                    if self.pss:
                        full = process.memory_full_info()
                        rss += full.rss
                        pss += getattr(full, "pss", 0)
                    else:
                        rss += process.memory_info().rss
                except psutil.Error:
                    continue
                alive += 1
            if alive:
                rss_now[name] = rss / MIB
                pss_now[name] = pss / MIB
                counts[name] = alive
        with self._lock:
            for name, value in rss_now.items():
                self._rss[name].append(value)
                if self.pss:
                    self._pss[name].append(pss_now[name])
                self._counts[name] = max(self._counts[name], counts[name])
        return rss_now

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample_once()

    def start(self) -> RssSampler:
        if self._thread is not None:
            raise RuntimeError("this sampler was already started")
        self.sample_once()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is None or self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(10)
        self.sample_once()

    def __enter__(self) -> RssSampler:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------------- results

    def samples(self) -> dict[str, list[float]]:
        """Every RSS sample (MiB) of each group, in order."""
        with self._lock:
            return {name: list(values) for name, values in self._rss.items()}

    def summary(self) -> dict[str, RssSummary]:
        """Per group with at least one sample: median and peak RSS (MiB), and more."""
        with self._lock:
            result: dict[str, RssSummary] = {}
            for name, values in self._rss.items():
                if not values:
                    continue
                pss = self._pss[name]
                result[name] = RssSummary(
                    median_mib=statistics.median(values),
                    peak_mib=max(values),
                    pss_median_mib=statistics.median(pss) if pss else float("nan"),
                    samples=len(values),
                    processes=self._counts[name],
                )
            return result

    def measurements(
        self,
        bench: str,
        label: str,
        *,
        statistic: str = "median",
        comparison: Mapping[str, RssSummary] | None = None,
        comparison_name: str = "",
    ) -> list[Measurement]:
        """One Measurement per group, named "<label>: <group>" (MiB, lower is better), with the
        median (or `statistic="peak"`) of this sampler's samples as its single value; the
        note gives the other statistic, the PSS when sampled and the process count. For
        values over repeated runs, build the Measurements from several samplers' summaries
        with `rss_measurements`."""
        return rss_measurements(
            bench,
            label,
            [self.summary()],
            statistic=statistic,
            comparison=[comparison] if comparison else None,
            comparison_name=comparison_name,
        )


def _value(summary: RssSummary, statistic: str) -> float:
    if statistic == "median":
        return summary.median_mib
    if statistic == "peak":
        return summary.peak_mib
    raise ValueError(f"statistic must be median or peak, not {statistic!r}")


def rss_measurements(
    bench: str,
    label: str,
    runs: Sequence[Mapping[str, RssSummary]],
    *,
    statistic: str = "median",
    comparison: Sequence[Mapping[str, RssSummary]] | None = None,
    comparison_name: str = "",
    compare_without: Sequence[str] = ("triton",),
) -> list[Measurement]:
    """One Measurement per group seen in `runs` (one `RssSampler.summary()` per repeated run),
    its values one per run, and a "<label>: total" row (the sum over the groups). With
    `comparison` (summaries of the comparison's processes, one per run), a row "<label>: total
    without <compare_without>" compares that sum without the groups the comparison shares
    (say, the Triton server both pipelines call) with the sum of the comparison's groups."""
    names: list[str] = []
    for run in runs:
        names += [name for name in run if name not in names]
    measurements: list[Measurement] = []
    other = "peak" if statistic == "median" else "median"
    for name in names:
        here = [run[name] for run in runs if name in run]
        note = (
            f"{statistic} of the samples of a run; {other} "
            f"{statistics.median(_value(s, other) for s in here):.0f} MiB; "
            f"up to {max(s.processes for s in here)} process(es)"
        )
        pss = [s.pss_median_mib for s in here if not math.isnan(s.pss_median_mib)]
        if pss:
            note += f"; PSS (shared pages split among sharers) {statistics.median(pss):.0f} MiB"
        measurements.append(
            Measurement(
                bench=bench,
                metric=f"{label}: {name}",
                unit="MiB",
                kiln=[_value(s, statistic) for s in here],
                note=note,
            )
        )
    if not runs:
        return measurements

    def total(run: Mapping[str, RssSummary], without: Sequence[str] = ()) -> float:
        return sum(_value(s, statistic) for name, s in run.items() if name not in without)

    measurements.append(
        Measurement(
            bench=bench,
            metric=f"{label}: total",
            unit="MiB",
            kiln=[total(run) for run in runs],
            note=f"sum over {', '.join(names)} (shared pages counted once per process)",
        )
    )
    if comparison:
        compared = sorted({name for run in comparison for name in run})
        kept = [name for name in names if name not in compare_without]
        measurements.append(
            Measurement(
                bench=bench,
                metric=f"{label}: total without {', '.join(compare_without)}",
                unit="MiB",
                kiln=[total(run, compare_without) for run in runs],
                comparison_name=comparison_name,
                comparison=[total(run) for run in comparison],
                note=f"sum over {', '.join(kept)}; comparison: sum over {', '.join(compared)}",
            )
        )
    return measurements


def stack_processes(local: Any) -> dict[str, list[int]]:
    """Component name → pids of a running LocalStack's processes: `local.processes()` when the
    stack has it (each component's process group, its leader first), else the pidfile's pid of
    "kafka", "triton" and each service (the sampler adds their children). Components that do
    not run are left out."""
    processes = getattr(local, "processes", None)
    if callable(processes):
        found: dict[str, list[int]] = {
            str(name): [int(pid) for pid in pids] for name, pids in processes().items()
        }
        return found
    from tests.stack_support import SERVICES

    result: dict[str, list[int]] = {}
    for name in ("kafka", "triton", *SERVICES):
        pid = local.pid(name)
        if pid is None:
            continue
        result[name] = [p.pid for p in group_processes([pid])]
    return result
