"""A working tool, not a bench of the table: CPU ms per job of each component under a steady
window of zero-delay jobs, and optionally py-spy's collapsed stacks of one service, for finding
where the pipeline's CPU goes between two code changes.

    PYTHONPATH=. uv run python -m bench.cpu_per_job --window 64 --seconds 20 --rounds 2 \
        --profile notifier --stacks /tmp/notifier.txt

py-spy (`--gil`) samples the thread that holds the GIL, also while that thread waits for a core
on a busy machine. So its shares are of time, not of CPU: in one run at 16 in flight billing
used 0.21 of a core (by /proc) while py-spy counted 0.32 (0.64 without `--gil`). `--perf`
adds the whole machine's CPU by process and library from Linux `perf` (native code and the
kernel included, Python frames not): what the interpreter, the kernel, Kafka's JVM and Triton
each take.

The stack is the bench stack (bench/kiln_stack.py); `--restart gateway,notifier` between rounds
is not needed: run the tool again after a change.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import psutil

from bench.footprint import group_processes, stack_processes
from bench.hops import counters
from bench.kiln_stack import tool_stack
from bench.profiling import record_argv
from bench.sustained import sustained
from bench.throughput import body_maker


def cpu_seconds(groups: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds so far of each group's processes and their descendants, each counted once
    (a component's group lists its children too: Triton's server and stubs)."""
    found: dict[str, float] = {}
    for name, pids in groups.items():
        total = 0.0
        for process in group_processes(pids):
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                continue
        found[name] = total
    return found


def database_work(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]], jobs: int
) -> str:
    """Write transactions and SQL statements per job of each service, under load (where a
    batch carries many jobs' events, unlike the one-at-a-time `hops` bench)."""
    parts = []
    for name, now in after.items():
        writes = (now["writes"] - before[name]["writes"]) / jobs
        statements = (now["statements"] - before[name]["statements"]) / jobs
        parts.append(f"{name} {writes:.2f} / {statements:.1f}")
    return "per job under load (write transactions / statements): " + ", ".join(parts)


def leaf_summary(text: str, top: int = 40) -> str:
    """Self time by function and inclusive time by Kiln function, from collapsed stacks."""
    leaves: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if frames[-1].startswith("select (") or "selectors.py" in frames[-1]:
            continue
        total += count
        leaves[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    lines = [f"samples {total}", "-- self --"]
    lines += [f"{100 * c / total:5.1f}% {f}" for f, c in leaves.most_common(top)]
    lines.append("-- inclusive --")
    lines += [f"{100 * c / total:5.1f}% {f}" for f, c in inclusive.most_common(top * 2)]
    return "\n".join(lines)


def start_perf(output: str, seconds: float) -> subprocess.Popen[bytes] | None:
    """`perf record` of every CPU for the measured span, or None (said why) without perf."""
    perf = shutil.which("perf")
    if perf is None:
        print("--perf: no `perf` on PATH (Debian: linux-perf)", flush=True)
        return None
    argv = [perf, "record", "-a", "-F", "250", "-o", output, "--", "sleep", str(int(seconds))]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def perf_split(recording: subprocess.Popen[bytes], output: str, top: int = 20) -> str:
    """The machine's samples by process name and library (`perf report --sort comm,dso`)."""
    _, stderr = recording.communicate(timeout=120)
    if recording.returncode != 0:
        return f"--perf: perf record failed: {stderr.decode(errors='replace')[-300:]}"
    report = subprocess.run(
        [shutil.which("perf") or "perf", "report", "-i", output, "--sort", "comm,dso", "--stdio"],
        capture_output=True,
        text=True,
        check=False,
    )
    rows = [
        line for line in report.stdout.splitlines() if line.strip() and not line.startswith("#")
    ]
    return "machine by process and library (perf):\n" + "\n".join(rows[:top])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--profile", default="")
    parser.add_argument("--stacks", default="/tmp/stacks.txt")
    parser.add_argument("--workdir", default="")
    parser.add_argument("--perf", default="", help="perf.data path: record the whole machine")
    args = parser.parse_args()
    with tool_stack(args.workdir, "kiln-cpu-") as (stack, receiver):
        keys = [a.sandbox_key for a in stack.accounts]
        groups = stack_processes(stack.local)
        body = body_maker(receiver)
        asyncio.run(
            sustained(stack.jobs_url, keys, receiver, body, window=8, duration_s=3, warmup_s=1)
        )
        for round_ in range(args.rounds):
            spy = None
            if args.profile and round_ == args.rounds - 1:
                pid = stack.local.pid(args.profile)
                argv = record_argv(pid, args.seconds, 200, args.stacks)
                spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            perf = None
            if args.perf and round_ == args.rounds - 1:
                perf = start_perf(args.perf, args.seconds)
            before = cpu_seconds(groups)
            counted_before = counters(stack)
            own_before = psutil.Process().cpu_times()
            machine_before = psutil.cpu_times()
            started = time.monotonic()
            run = asyncio.run(
                sustained(
                    stack.jobs_url,
                    keys,
                    receiver,
                    body,
                    window=args.window,
                    duration_s=args.seconds,
                    warmup_s=0.0,
                )
            )
            elapsed = time.monotonic() - started
            after = cpu_seconds(groups)
            counted_after = counters(stack)
            own_after = psutil.Process().cpu_times()
            machine_after = psutil.cpu_times()
            busy = sum(machine_after) - sum(machine_before)
            busy -= machine_after.idle - machine_before.idle
            busy -= machine_after.iowait - machine_before.iowait
            bench_s = (own_after.user + own_after.system) - (own_before.user + own_before.system)
            jobs = max(run.completed, 1)
            per = {n: 1000 * (after[n] - before[n]) / jobs for n in groups}
            shares = ", ".join(f"{n} {v:.2f}" for n, v in sorted(per.items(), key=lambda i: -i[1]))
            services = sum(v for n, v in per.items() if n not in ("kafka", "triton"))
            print(
                f"round {round_ + 1}: {run.jobs_per_s:.1f} jobs/s, "
                f"p50 {1000 * run.p50_s:.0f} ms ({run.completed} done in {elapsed:.0f} s); "
                f"CPU ms/job: {shares}; services {services:.2f}; bench client "
                f"{1000 * bench_s / jobs:.2f}; machine {busy / elapsed:.2f} cores busy, "
                f"{1000 * busy / jobs:.2f} ms/job",
                flush=True,
            )
            print(f"  {database_work(counted_before, counted_after, jobs)}", flush=True)
            if spy is not None:
                spy.wait(timeout=120)
                text = Path(args.stacks).read_text()
                Path(args.stacks + ".summary").write_text(leaf_summary(text))
                print(f"stacks: {args.stacks}(.summary)", flush=True)
            if perf is not None:
                print(perf_split(perf, args.perf), flush=True)


if __name__ == "__main__":
    main()
