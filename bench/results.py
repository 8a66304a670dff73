"""What a benchmark run reports: measurements side by side with their comparison, as a table
for people and as JSON for tools (`bench/results/*.json`)."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from bench.stats import Summary, ratio, summarize

Better = Literal["lower", "higher"]


@dataclass
class Measurement:
    """One metric of one bench: a value per repeated run for Kiln and, when the bench has one,
    for its comparison (the HTTP ceiling, the Celery baseline, Triton driven directly, ...)."""

    bench: str
    metric: str
    unit: str
    kiln: list[float]
    comparison_name: str = ""
    comparison: list[float] = field(default_factory=list)
    better: Better = "lower"
    note: str = ""

    @property
    def kiln_summary(self) -> Summary:
        return summarize(self.kiln)

    @property
    def comparison_summary(self) -> Summary:
        return summarize(self.comparison)

    @property
    def ratio(self) -> float:
        """Kiln's median over the comparison's median."""
        return ratio(self.kiln_summary.median, self.comparison_summary.median)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["kiln_summary"] = asdict(self.kiln_summary)
        data["comparison_summary"] = asdict(self.comparison_summary) if self.comparison else None
        data["ratio"] = None if math.isnan(self.ratio) else self.ratio
        finite: dict[str, Any] = _finite(data)
        return finite


def _finite(value: Any) -> Any:
    """JSON has no NaN: missing numbers become null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        with open("/proc/meminfo") as meminfo:
            info["memory_kib"] = int(meminfo.readline().split()[1])
        info["load_average"] = list(os.getloadavg())
    except (OSError, ValueError, IndexError):
        pass
    try:
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


@dataclass
class Report:
    smoke: bool
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    measurements: list[Measurement] = field(default_factory=list)
    # Per bench: what limits its numbers (a profile's summary, a saturated resource, ...).
    limits: dict[str, list[str]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def add(self, measurements: Sequence[Measurement]) -> None:
        self.measurements.extend(measurements)

    def note_limit(self, bench: str, text: str) -> None:
        self.limits.setdefault(bench, []).append(text)

    def to_json(self) -> dict[str, Any]:
        return {
            "smoke": self.smoke,
            "started_at": self.started_at,
            "machine": machine(),
            "settings": self.settings,
            "measurements": [m.to_json() for m in self.measurements],
            "limits": self.limits,
        }

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")

    def table(self) -> str:
        return format_table(self.measurements)


def _number(value: float) -> str:
    if math.isnan(value):
        return "-"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cell(summary: Summary) -> str:
    if summary.runs == 0:
        return "-"
    if summary.runs == 1:
        return _number(summary.median)
    return f"{_number(summary.median)} [{_number(summary.low)}–{_number(summary.high)}]"


def _ratio(value: float) -> str:
    if math.isnan(value):
        return ""
    # Two significant digits below 0.1, so that 13 jobs/s against 6351 is not shown as 0.00×.
    return f"{value:.2g}×" if abs(value) < 0.1 else f"{value:.2f}×"


def format_table(measurements: Sequence[Measurement]) -> str:
    """Plain-text columns: bench, metric, Kiln median [low–high], comparison, ratio."""
    header = ("bench", "metric", "unit", "kiln", "comparison", "vs", "ratio")
    rows = [header]
    for m in measurements:
        rows.append(
            (
                m.bench,
                m.metric,
                m.unit,
                _cell(m.kiln_summary),
                _cell(m.comparison_summary) if m.comparison else "",
                m.comparison_name,
                _ratio(m.ratio),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
