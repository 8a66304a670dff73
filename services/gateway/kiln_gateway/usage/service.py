"""Usage decisions: the billing period, and the range a statistics request covers."""

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from kiln_gateway.errors import ValidationFailed

STATS_DEFAULT_DAYS = 30
STATS_MAX_DAYS = 366


def period_start(now: datetime) -> datetime:
    """Usage periods are calendar months in UTC."""
    return now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class StatsRange:
    first: date
    last: date  # inclusive

    @property
    def lower(self) -> datetime:
        return datetime.combine(self.first, datetime.min.time(), UTC)

    @property
    def upper(self) -> datetime:
        """The first instant after the range."""
        return datetime.combine(self.last + timedelta(days=1), datetime.min.time(), UTC)


def stats_range(start: date | None, end: date | None, today: date) -> StatsRange:
    """[start, end]: by default the 30 days up to `end` (today unless given)."""
    last = end or today
    first = start or (last - timedelta(days=STATS_DEFAULT_DAYS - 1))
    if first > last or (last - first).days > STATS_MAX_DAYS:
        raise ValidationFailed(
            "Bad date range.", [{"field": "start", "message": "start <= end, at most 366 days"}]
        )
    return StatsRange(first, last)
