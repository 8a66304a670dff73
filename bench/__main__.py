"""`make bench`: run the benchmarks, print the table, write the JSON.

    uv run python -m bench                     # every bench, full sizes (about N minutes)
    uv run python -m bench --smoke             # tiny sizes: checks that every bench still runs
    uv run python -m bench --only submit,overhead --repeats 5 --json /tmp/b.json

Benches (docs/BENCHMARKS.md explains each and what the last full run measured):
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.context import BenchConfig, BenchContext
from bench.results import Report

REPO = Path(__file__).resolve().parents[1]

# Name → module (each has `run(ctx: BenchContext) -> None`). The order matters: the startup
# time is measured before anything else loads the machine, and scaling changes the shared
# stack's instance counts, so it runs last.
BENCHES: dict[str, str] = {
    "startup": "bench.footprint_startup",
    "hops": "bench.hops",
    "submit": "bench.submit_latency",
    "overhead": "bench.pipeline_overhead",
    "triton": "bench.triton_efficiency",
    "models": "bench.model_costs",
    "consumers": "bench.consumer_libraries",
    "throughput": "bench.throughput",
    "scaling": "bench.scaling",
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat")
    parser.add_argument("--only", default="", help=f"comma-separated, of: {', '.join(BENCHES)}")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (3)")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profiles")
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="where to write the results (bench/results/latest.json; smoke: "
        "bench/results/smoke.json)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="folder for the stacks (default: a temporary one)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        print(f"unknown bench {', '.join(unknown)} (one of {', '.join(BENCHES)})", file=sys.stderr)
        return 2
    if args.repeats < 1:
        print("--repeats must be at least 1", file=sys.stderr)
        return 2
    config = BenchConfig(smoke=args.smoke, repeats=args.repeats, profile=not args.no_profile)
    report = Report(smoke=args.smoke)
    report.settings = {"benches": names, "repeats": 1 if args.smoke else args.repeats}
    out = args.json or REPO / "bench" / "results" / ("smoke.json" if args.smoke else "latest.json")
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp:
        workdir = (args.workdir or Path(tmp)).resolve()
        ctx = BenchContext(config, report, workdir)
        try:
            for name in (n for n in BENCHES if n in names):
                started = time.monotonic()
                print(f"\n=== bench {name} ===", flush=True)
                module = importlib.import_module(BENCHES[name])
                try:
                    module.run(ctx)
                except Exception as exc:  # one broken bench must not hide the others' numbers
                    failed.append(name)
                    report.note_limit(name, f"FAILED: {type(exc).__name__}: {exc}")
                    print(f"bench {name} FAILED: {type(exc).__name__}: {exc}", flush=True)
                print(f"=== bench {name}: {time.monotonic() - started:.0f} s ===", flush=True)
                report.write_json(out)  # partial results survive a later crash
        finally:
            ctx.close()
    print()
    print(report.table())
    for bench, lines in report.limits.items():
        for line in lines:
            print(f"[{bench}] {line}")
    report.write_json(out)
    print(f"\nresults: {out}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
