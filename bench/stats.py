"""Summaries of repeated measurements: medians with their spread, percentiles, ratios."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0–100), interpolated linearly between the closest ranks.

    The same definition as numpy's default, so that numbers can be checked with it."""
    if not values:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is not within 0..100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Summary:
    """The median of repeated runs, and the lowest and highest run (the spread)."""

    median: float
    low: float
    high: float
    runs: int

    @property
    def spread_pct(self) -> float:
        """(high − low) / median, in percent: how much the runs disagree."""
        if self.runs == 0 or self.median == 0 or math.isnan(self.median):
            return math.nan
        return 100 * (self.high - self.low) / abs(self.median)


def summarize(values: Sequence[float]) -> Summary:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return Summary(math.nan, math.nan, math.nan, 0)
    return Summary(statistics.median(finite), min(finite), max(finite), len(finite))


def ratio(value: float, comparison: float) -> float:
    """value / comparison, NaN when either is missing or the comparison is 0."""
    if math.isnan(value) or math.isnan(comparison) or comparison == 0:
        return math.nan
    return value / comparison
