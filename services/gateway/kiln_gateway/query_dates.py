"""Dates and times in query parameters: ISO 8601 text only."""

import re
from datetime import date, datetime
from typing import Annotated, Any

from pydantic import BeforeValidator

_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def _iso_text(value: Any) -> Any:
    """Refuse a bare number, which pydantic would read as a Unix time: the document says ISO
    8601 text, and `created_before=0.5` meaning 1970 is a surprise, not a feature."""
    if isinstance(value, int | float) or (isinstance(value, str) and _NUMBER.fullmatch(value)):
        raise ValueError("must be an ISO 8601 date or date-time, not a number")
    return value


IsoDatetime = Annotated[datetime, BeforeValidator(_iso_text)]
IsoDate = Annotated[date, BeforeValidator(_iso_text)]
