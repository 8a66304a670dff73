"""The console's pure decisions: the form built from a model's JSON Schema and the input read
back from it, the overview's days, when a session is live, which hosts are loopback, and where
a sign-in may send the browser back to."""

from datetime import UTC, date, datetime, timedelta

import pytest

from kiln_gateway.console.charts import chart_json, daily_series
from kiln_gateway.console.errors import safe_next
from kiln_gateway.console.schema_form import form_fields, parse_input
from kiln_gateway.console.sessions import csrf_matches, is_live, is_loopback_host
from kiln_gateway.jobs.service import input_errors
from kiln_gateway.tables import ConsoleSession
from kiln_runtime.catalog import load_catalog

SCHEMA = {
    "type": "object",
    "required": ["prompt"],
    "properties": {
        "prompt": {"type": "string", "maxLength": 1000, "description": "What to draw."},
        "title": {"type": "string", "maxLength": 50},
        "seed": {"type": "integer", "minimum": 0, "default": 0},
        "width": {"type": "integer", "multipleOf": 8, "default": 512},
        "strength": {"type": "number", "minimum": 0, "maximum": 1},
        "fps": {"type": "integer", "enum": [12, 24], "default": 12},
        "voice": {"type": "string", "enum": ["en", "de"]},
        "image_url": {"type": "string", "format": "uri"},
        "loop": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
}


def test_each_schema_type_gets_its_widget() -> None:
    fields = {f.name: f for f in form_fields(SCHEMA)}
    assert next(f.name for f in form_fields(SCHEMA)) == "prompt"  # required first
    assert fields["prompt"].widget == "textarea" and fields["prompt"].required
    assert fields["title"].widget == "text"
    assert fields["seed"].widget == "integer" and fields["seed"].step == "1"
    assert fields["width"].step == "8"
    assert fields["strength"].widget == "number" and fields["strength"].maximum == 1
    assert fields["fps"].widget == "select" and fields["fps"].options == (12, 24)
    assert fields["image_url"].widget == "url"
    assert fields["loop"].widget == "checkbox"
    assert fields["tags"].widget == "json"
    assert fields["prompt"].input_name == "input.prompt"


def test_posted_text_becomes_json_types_and_empty_fields_are_left_out() -> None:
    fields = form_fields(SCHEMA)
    posted = {
        "prompt": "  a lighthouse ",
        "title": "",
        "seed": " 7 ",
        "width": "",
        "strength": "0.5",
        "fps": "24",
        "voice": "de",
        "image_url": "",
        "tags": '["a", "b"]',
    }
    parsed = parse_input(fields, posted, checked={"loop"})
    assert parsed.errors == {}
    assert parsed.value == {
        "prompt": "  a lighthouse ",  # text is the person's, spaces and all
        "seed": 7,
        "strength": 0.5,
        "fps": 24,
        "voice": "de",
        "loop": True,
        "tags": ["a", "b"],
    }


def test_text_that_is_not_its_type_is_named() -> None:
    fields = form_fields(SCHEMA)
    posted = {"prompt": "", "seed": "1.5", "strength": "lots", "fps": "30", "tags": "[oops"}
    parsed = parse_input(fields, posted, checked=set())
    assert parsed.errors == {
        "prompt": "is required",
        "seed": "must be a whole number",
        "strength": "must be a number",
        "fps": "is not one of the choices",
        "tags": "must be JSON",
    }
    assert parse_input(fields, {"prompt": "x", "strength": "inf"}, set()).errors == {
        "strength": "must be a number"
    }


@pytest.mark.parametrize("model", load_catalog().models, ids=lambda m: m.id)
def test_every_catalog_model_gets_a_form_whose_defaults_are_valid_input(model: object) -> None:
    schema = model.input_schema  # type: ignore[attr-defined]
    fields = form_fields(schema)
    posted = {f.name: f.shown(f.default) for f in fields}
    for f in fields:
        if f.required and not posted[f.name]:
            posted[f.name] = "https://example.com/a.png" if f.widget == "url" else "a test"
    parsed = parse_input(fields, posted, checked=set())
    assert parsed.errors == {}
    assert input_errors(schema, parsed.value) == []


def test_the_overview_has_every_day_live_and_sandbox_apart() -> None:
    rows = [("2026-11-02", False, 3, 2, 1, 10_000), ("2026-11-02", True, 5, 5, 0, 0)]
    days = daily_series(rows, date(2026, 11, 1), date(2026, 11, 3))
    assert [d.day for d in days] == ["2026-11-01", "2026-11-02", "2026-11-03"]
    assert days[0].live_jobs == 0 and days[2].sandbox_jobs == 0
    assert (days[1].live_jobs, days[1].live_failed, days[1].live_spent_millicredits) == (
        3,
        1,
        10_000,
    )
    assert (days[1].sandbox_jobs, days[1].sandbox_failed) == (5, 0)
    assert chart_json(days)["live_spent_millicredits"] == [0, 10_000, 0]


def _session(created: datetime, last_seen: datetime, ttl: timedelta) -> ConsoleSession:
    return ConsoleSession(
        id="x", kind="account", account_id="acct_1", csrf_token="t",
        created_at=created, expires_at=created + ttl, last_seen_at=last_seen,
    )  # fmt: skip


def test_a_session_ends_at_its_lifetime_or_when_idle() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    session = _session(start, start, timedelta(hours=12))
    assert is_live(session, start + timedelta(minutes=29), idle_timeout_s=1800)
    assert not is_live(session, start + timedelta(minutes=30), idle_timeout_s=1800)
    busy = _session(start, start + timedelta(hours=11, minutes=59), timedelta(hours=12))
    assert is_live(busy, start + timedelta(hours=11, minutes=59, seconds=30), 1800)
    assert not is_live(busy, start + timedelta(hours=12), 1800)
    naive = _session(start.replace(tzinfo=None), start.replace(tzinfo=None), timedelta(hours=1))
    assert is_live(naive, start + timedelta(minutes=1), 1800)  # SQLite hands back naive UTC


def test_csrf_tokens_must_match_exactly() -> None:
    assert csrf_matches("abc", "abc")
    assert not csrf_matches("abc", "abd")
    assert not csrf_matches("abc", "")
    assert not csrf_matches("abc", None)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1:8000", True),
        ("localhost", True),
        ("app.localhost:3000", True),
        ("[::1]:8000", True),
        ("::1", True),
        ("127.1.2.3", True),
        ("console.example.com", False),
        ("10.0.0.5:8000", False),
        ("", False),
    ],
)
def test_cookies_are_secure_except_on_loopback(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize(
    ("wanted", "sent_to"),
    [
        ("/console/jobs?status=failed", "/console/jobs?status=failed"),
        (None, "/console/"),
        ("https://evil.example/", "/console/"),
        ("//evil.example/console/", "/console/"),
        ("/console/\\evil", "/console/"),
        ("/api/v1/jobs", "/console/"),
        ("/console/\r\nSet-Cookie: x", "/console/"),
    ],
)
def test_sign_in_sends_back_only_to_console_paths(wanted: str | None, sent_to: str) -> None:
    assert safe_next(wanted) == sent_to
