"""The benchmarks' pure logic: percentiles, summaries, the report table and JSON, py-spy
parsing. (The benches themselves run at smoke size in test_bench_smoke.py.)"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.profiling import package_of, parse_raw
from bench.results import Measurement, Report, format_table
from bench.stats import percentile, ratio, summarize


def test_percentile_interpolates_between_ranks_like_numpy() -> None:
    values = [10.0, 1.0, 4.0, 3.0, 2.0]  # sorted: 1 2 3 4 10
    assert percentile(values, 50) == 3.0
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 10.0
    assert percentile(values, 90) == pytest.approx(4 + 0.6 * 6)  # rank 3.6
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_summary_is_median_with_lowest_and_highest_run() -> None:
    summary = summarize([12.0, 10.0, 30.0])
    assert (summary.median, summary.low, summary.high, summary.runs) == (12.0, 10.0, 30.0, 3)
    assert summary.spread_pct == pytest.approx(100 * 20 / 12)
    assert summarize([float("nan"), 2.0]).runs == 1
    assert summarize([]).runs == 0
    assert ratio(30.0, 10.0) == 3.0
    assert math.isnan(ratio(1.0, 0.0))


def test_table_and_json_show_medians_spread_and_ratio(tmp_path: Path) -> None:
    m = Measurement(
        "submit", "p50 @ 10/s", "ms", [40.0, 50.0, 45.0], "bare FastAPI", [2.0, 3.0, 2.5]
    )
    table = format_table([m])
    assert "45.0 [40.0–50.0]" in table
    assert "2.50 [2.00–3.00]" in table
    assert "18.00×" in table
    report = Report(smoke=True)
    report.add([m, Measurement("startup", "make up", "s", [float("nan")])])
    report.note_limit("submit", "gateway CPU")
    out = tmp_path / "r.json"
    report.write_json(out)
    data = json.loads(out.read_text())  # NaN would not be valid JSON
    assert data["measurements"][0]["ratio"] == pytest.approx(18.0)
    assert data["measurements"][0]["kiln_summary"]["median"] == 45.0
    assert data["measurements"][1]["kiln"] == [None]
    assert data["limits"] == {"submit": ["gateway CPU"]}
    assert data["machine"]["cpus"] >= 1


def test_py_spy_raw_stacks_are_summed_by_function_package_and_kiln_frame() -> None:
    raw = "\n".join(
        [
            "main (/app/kiln_gateway/app.py:3);execute (/v/lib/python3.11/site-packages/"
            "sqlalchemy/engine/base.py:10) 30",
            "main (/app/kiln_gateway/app.py:3);dumps (/py/lib/python3.11/json/__init__.py:1) 10",
            "worker (/v/lib/python3.11/site-packages/aiosqlite/core.py:5) 60",
        ]
    )
    profile = parse_raw("gateway", raw, duration_s=2.0, rate_hz=100)
    assert profile.samples == 100
    assert profile.cpu_share == pytest.approx(0.5)
    assert profile.by_package["aiosqlite"] == 60
    assert profile.by_package["stdlib:json"] == 10
    assert profile.by_kiln_frame["main (kiln_gateway)"] == 40
    assert profile.by_kiln_frame["(no Kiln frame)"] == 60
    assert "50% of a core" in profile.summary()
    assert package_of("/x/site-packages/faust/app.py") == "faust"


def test_waiting_in_select_is_not_counted_as_cpu() -> None:
    raw = (
        "run (/py/lib/python3.11/asyncio/base_events.py:1);select (/py/lib/python3.11/"
        "selectors.py:468) 70\nrun (/py/lib/python3.11/asyncio/base_events.py:1) 30"
    )
    profile = parse_raw("billing", raw, duration_s=1.0, rate_hz=100)
    assert profile.samples == 30


def test_tiny_ratios_keep_two_significant_digits() -> None:
    table = format_table([Measurement("s", "jobs/s", "jobs/s", [13.0], "bare", [6351.0])])
    assert "0.002×" in table
