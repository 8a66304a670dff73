"""Every bench at smoke size (`python -m bench --smoke`), so that the benchmarks do not rot:
one run of each against real stacks (Kafka, Triton, the five services; Redis and Celery for
the baseline), checking that each produced its numbers, not what the numbers are."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCHES = ("startup", "submit", "overhead", "triton", "models", "throughput", "scaling")

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(900)
def test_every_bench_runs_at_smoke_size(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--json", str(out), "--workdir", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    tail = (result.stdout[-6000:] + "\n" + result.stderr[-3000:]).strip()
    assert result.returncode == 0, tail
    data = json.loads(out.read_text())
    assert data["smoke"] is True
    measured = {m["bench"] for m in data["measurements"]}
    # footprint rows come from the startup (idle) and throughput (under load) benches.
    assert set(BENCHES) - {"startup"} <= measured, measured
    assert "footprint" in measured or "startup" in measured, measured
    for m in data["measurements"]:
        values = [v for v in m["kiln"] if v is not None]
        assert values and all(math.isfinite(v) for v in values), m
        if m["unit"] in ("jobs/s", "req/s"):
            assert min(values) > 0, m
    assert "bench" in result.stdout and "ratio" in result.stdout, tail
