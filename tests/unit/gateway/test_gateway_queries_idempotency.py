from datetime import UTC, datetime

import pytest

from kiln_gateway.errors import BadRequest, ValidationFailed
from kiln_gateway.jobs.idempotency import checked_key, fingerprint
from kiln_gateway.jobs.service import JobFilters, JobSort
from kiln_gateway.usage.service import period_start


def test_sort_accepts_known_fields_in_both_directions() -> None:
    assert JobSort.parse("created_at") == JobSort("created_at", descending=False)
    assert JobSort.parse("-completed_at") == JobSort("completed_at", descending=True)
    for bad in ("password", "-", "created_at; drop table jobs", ""):
        with pytest.raises(ValidationFailed):
            JobSort.parse(bad)


def test_status_filter_takes_a_comma_list_of_known_statuses() -> None:
    assert JobFilters.parse("queued, running", None, None, None).status == ["queued", "running"]
    for bad in ("exploded", ",", "queued,nope"):
        with pytest.raises(ValidationFailed):
            JobFilters.parse(bad, None, None, None)


def test_fingerprint_ignores_key_order_but_not_values() -> None:
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


def test_idempotency_keys_are_bounded() -> None:
    assert checked_key(None) is None
    assert checked_key("k" * 255) == "k" * 255
    for bad in ("k" * 256, "", "new\nline"):
        with pytest.raises(BadRequest):
            checked_key(bad)


def test_usage_periods_are_utc_calendar_months() -> None:
    assert period_start(datetime(2026, 11, 21, 19, 5, tzinfo=UTC)) == datetime(
        2026, 11, 1, tzinfo=UTC
    )


def test_url_inputs_are_the_fields_the_schema_marks_as_uri() -> None:
    from kiln_gateway.jobs.service import url_inputs
    from kiln_runtime.catalog import load_catalog

    catalog = load_catalog()
    video = catalog.model("kiln/image-to-video")
    assert video is not None
    assert url_inputs(video.input_schema, {"image_url": "0", "motion": "zoom_in"}) == [
        ("image_url", "0")
    ]
    image = catalog.model("kiln/prompt-to-image")
    assert image is not None
    assert url_inputs(image.input_schema, {"prompt": "https://example.com"}) == []
