"""Dates and times in query parameters: ISO 8601 text only, and times as UTC instants."""

import re
from datetime import UTC, date, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator

_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def _iso_text(value: Any) -> Any:
    """Refuse a bare number, which pydantic would read as a Unix time: the document says ISO
    8601 text, and `created_before=0.5` meaning 1970 is a surprise, not a feature."""
    if isinstance(value, int | float) or (isinstance(value, str) and _NUMBER.fullmatch(value)):
        raise ValueError("must be an ISO 8601 date or date-time, not a number")
    return value


def as_utc(value: datetime) -> datetime:
    """The same instant in UTC; a time without an offset is UTC. Rows keep UTC times, and SQLite
    compares the written-out fields, so `10:00+05:00` must become `05:00Z` before it meets
    them. An instant that UTC cannot write (within a day of year 1 or year 9999 with an offset
    that crosses the calendar's end) is the calendar's first or last instant."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        edge = datetime.min if value.year == datetime.min.year else datetime.max
        return edge.replace(tzinfo=UTC)


IsoDatetime = Annotated[datetime, BeforeValidator(_iso_text), AfterValidator(as_utc)]
IsoDate = Annotated[date, BeforeValidator(_iso_text)]
