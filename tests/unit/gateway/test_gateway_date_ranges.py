"""Dates in queries: every calendar date is a valid bound (no range arithmetic overflows), and
a time with an offset means the same instant whatever the database."""

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta, timezone
from urllib.parse import quote

import pytest

from kiln_gateway.errors import ValidationFailed
from kiln_gateway.query_dates import as_utc
from kiln_gateway.usage.service import stats_range
from tests.unit.gateway.hostile_support import GatewayUnderTest, gateway_under_test

TODAY = date(2026, 11, 21)


def test_the_default_range_is_the_30_days_up_to_the_end() -> None:
    span = stats_range(None, None, TODAY)
    assert (span.first, span.last) == (date(2026, 10, 23), TODAY)
    assert span.lower == datetime(2026, 10, 23, tzinfo=UTC)
    assert span.upper == datetime(2026, 11, 22, tzinfo=UTC)


def test_the_default_start_stops_at_the_calendars_first_day() -> None:
    assert stats_range(None, date.min, TODAY).first == date.min
    assert stats_range(None, date(1, 1, 10), TODAY).first == date.min
    assert stats_range(None, date(1, 1, 30), TODAY).first == date.min
    assert stats_range(None, date(1, 1, 31), TODAY).first == date(1, 1, 2)


def test_a_range_ending_on_the_calendars_last_day_has_no_upper_bound() -> None:
    span = stats_range(None, date.max, TODAY)
    assert span.upper is None
    assert span.first == date.max - timedelta(days=29)


@pytest.mark.parametrize(
    ("start", "end"),
    [(date(2026, 5, 2), date(2026, 5, 1)), (date(2025, 1, 1), date(2026, 1, 3))],
)
def test_ranges_backwards_or_over_366_days_are_422(start: date, end: date) -> None:
    with pytest.raises(ValidationFailed):
        stats_range(start, end, TODAY)


def test_times_become_utc_instants() -> None:
    five = timezone(timedelta(hours=5))
    assert as_utc(datetime(2026, 5, 1, 10, tzinfo=five)) == datetime(2026, 5, 1, 5, tzinfo=UTC)
    assert as_utc(datetime(2026, 5, 1, 10)) == datetime(2026, 5, 1, 10, tzinfo=UTC)
    late = timezone(timedelta(hours=-23, minutes=-59))
    early = timezone(timedelta(hours=23, minutes=59))
    assert as_utc(datetime.max.replace(tzinfo=late)) == datetime.max.replace(tzinfo=UTC)
    assert as_utc(datetime.min.replace(tzinfo=early)) == datetime.min.replace(tzinfo=UTC)


@pytest.fixture(scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[GatewayUnderTest]:
    async with gateway_under_test(tmp_path_factory.mktemp("dates")) as under_test:
        yield under_test


@pytest.mark.parametrize(
    ("query", "start", "end"),
    [
        ("group_by=day&end=0001-01-01", "0001-01-01", "0001-01-01"),
        ("group_by=model&end=0001-01-01", "0001-01-01", "0001-01-01"),
        ("group_by=day&end=9999-12-31", "9999-12-02", "9999-12-31"),
        ("start=9999-12-31&end=9999-12-31", "9999-12-31", "9999-12-31"),
    ],
)
async def test_usage_stats_at_the_calendars_ends(
    gateway: GatewayUnderTest, query: str, start: str, end: str
) -> None:
    response = await gateway.client.get(f"/usage/stats?{query}", headers=gateway.auth())
    assert response.status_code == 200, response.text
    assert response.json() | {"data": []} == {
        "data": [],
        "group_by": "model" if "model" in query else "day",
        "start": start,
        "end": end,
    }


async def count_jobs(gateway: GatewayUnderTest, zone: timezone, **bounds: datetime) -> int:
    query = "&".join(f"{k}={quote(v.astimezone(zone).isoformat())}" for k, v in bounds.items())
    response = await gateway.client.get(f"/jobs/count?{query}", headers=gateway.auth())
    assert response.status_code == 200, response.text
    return int(response.json()["data"]["count"])


async def test_a_job_filter_with_an_offset_names_the_same_instant(
    gateway: GatewayUnderTest,
) -> None:
    job = {"model": "kiln/prompt-to-image", "input": {"prompt": "a lighthouse in a storm"}}
    created = await gateway.client.post("/jobs", json=job, headers=gateway.auth())
    assert created.status_code == 202, created.text
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    in_an_hour = datetime.now(UTC) + timedelta(hours=1)
    for offset in (0, 5, -5, 14):
        zone = timezone(timedelta(hours=offset))
        assert await count_jobs(gateway, zone, created_after=hour_ago) == 1, offset
        assert await count_jobs(gateway, zone, created_after=in_an_hour) == 0, offset
        assert await count_jobs(gateway, zone, created_before=in_an_hour) == 1, offset
        assert await count_jobs(gateway, zone, created_before=hour_ago) == 0, offset
