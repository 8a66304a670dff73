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
    def upper(self) -> datetime | None:
        """The first instant after the range; None after the calendar's last day."""
        if self.last == date.max:
            return None
        return datetime.combine(self.last + timedelta(days=1), datetime.min.time(), UTC)


def stats_range(start: date | None, end: date | None, today: date) -> StatsRange:
    """[start, end]: by default the 30 days up to `end` (today unless given).

    Every calendar date is a valid `start` or `end`: a range near the calendar's ends is
    answered like any other (there are no jobs then), and the default start never goes before
    the calendar's first day (`end=0001-01-01` covers that one day). Only a range that is not
    one (start after end) or is longer than STATS_MAX_DAYS is refused, with 422."""
    last = end or today
    if start is not None:
        first = start
    else:  # date.min.toordinal() is 1: never a day before it
        first = last - timedelta(days=min(STATS_DEFAULT_DAYS - 1, last.toordinal() - 1))
    if first > last or (last - first).days > STATS_MAX_DAYS:
        raise ValidationFailed(
            "Bad date range.", [{"field": "start", "message": "start <= end, at most 366 days"}]
        )
    return StatsRange(first, last)
