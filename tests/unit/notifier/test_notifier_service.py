"""The notifier's decisions: job object and payload of terminal events, targets, retry schedule."""

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.protobuf.message import Message

from kiln_contracts import Event, decode, encode, from_json, new_event
from kiln_contracts.registry import EXAMPLES_DIR
from kiln_contracts.v1 import common_pb2, credits_pb2, jobs_pb2
from kiln_notifier.config import NotifierSettings
from kiln_notifier.deliveries import (
    AttemptOutcome,
    DeliveryTarget,
    EndpointRecord,
    UnsupportedEvent,
    decide_after_attempt,
    delivery_targets,
    endpoint_accepts,
    job_view_from_event,
    next_attempt_delay,
    payload_for_event,
    webhook_type,
)
from kiln_runtime.file_tokens import verify_file_token
from kiln_runtime.job_object import FileLinks

LINKS = FileLinks(public_url="https://kiln.example.com/", signing_key="test-key", ttl_s=3600)
NOW = datetime(2025, 6, 12, 9, 15, tzinfo=UTC)
CREATED = datetime(2025, 6, 12, 9, 14, 3, 412000, tzinfo=UTC)
OCCURRED = datetime(2025, 6, 12, 9, 14, 19, 312000, tzinfo=UTC)
ACCOUNT = "acct_1"
JOB = "3d6f0a52-8c1e-4b7a-9f21-6e4c2d8b1a07"


def spec(**overrides: Any) -> common_pb2.JobSpec:
    fields: dict[str, Any] = {
        "model": "kiln/prompt-to-image",
        "input_json": json.dumps({"prompt": "a lighthouse", "seed": 42}),
        "metadata_json": json.dumps({"order_id": "ord_1042"}),
        "webhook_url": "https://hooks.example.com/job",
        "pool": "cpu-image",
    } | overrides
    message = common_pb2.JobSpec(**fields)
    message.created_at.FromDatetime(CREATED)
    return message


def event(event_type: str, message: Message) -> Event:
    envelope = new_event(
        event_type,
        message,
        account_id=ACCOUNT,
        job_id=JOB,
        trace_id="trace-1",
        occurred_at=OCCURRED,
    )
    return decode(encode(envelope))


def completed(**spec_overrides: Any) -> Event:
    message = jobs_pb2.JobCompleted(
        spec=spec(**spec_overrides),
        price_millicredits=5000,
        attempt=1,
        result=jobs_pb2.JobResult(
            blob_key=f"results/{ACCOUNT}/{JOB}.bin",
            content_type="image/png",
            size_bytes=389148,
            encryption=jobs_pb2.ResultEncryption(
                scheme="kiln-hpke-v1",
                key_id="key-1",
                salt=b"\x01" * 16,
                sealed_key=b"\x02" * 80,
                chunk_size=1048576,
            ),
        ),
    )
    message.started_at.FromDatetime(OCCURRED - timedelta(seconds=3))
    message.completed_at.FromDatetime(OCCURRED)
    return event("job.completed", message)


def failed() -> Event:
    message = jobs_pb2.JobFailed(
        spec=spec(),
        price_millicredits=5000,
        attempt=3,
        error_code="INFERENCE_ERROR",
        error_message="The model could not produce an image.",
        retryable=False,
    )
    message.failed_at.FromDatetime(OCCURRED)
    return event("job.failed", message)


def rejected() -> Event:
    return event(
        "credits.rejected",
        credits_pb2.CreditsRejected(
            spec=spec(),
            required_millicredits=5000,
            balance=common_pb2.Balance(available_millicredits=1500, reserved_millicredits=0),
        ),
    )


def canceled() -> Event:
    message = jobs_pb2.JobCanceled(spec=spec(metadata_json=""), price_millicredits=5000)
    message.canceled_at.FromDatetime(OCCURRED)
    return event("job.canceled", message)


def rendered(evt: Event) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(payload_for_event(evt, LINKS, now=NOW))
    return body


# ---------------------------------------------------------------------------------------------
# Job object and payload


def test_completed_job_object() -> None:
    body = rendered(completed())
    assert body["type"] == "job.completed"
    assert body["timestamp"] == "2025-06-12T09:14:19.312000Z"
    job = body["data"]
    assert job["id"] == JOB
    assert job["model"] == "kiln/prompt-to-image"
    assert job["status"] == "completed"
    assert job["input"] == {"prompt": "a lighthouse", "seed": 42}
    assert job["metadata"] == {"order_id": "ord_1042"}
    assert job["sandbox"] is False
    assert job["created_at"] == "2025-06-12T09:14:03.412000Z"
    assert job["started_at"] == "2025-06-12T09:14:16.312000Z"
    assert job["completed_at"] == "2025-06-12T09:14:19.312000Z"
    assert job["queue_position"] is None
    assert job["progress"] == 1.0
    assert job["cost"] == "5"
    assert job["error"] is None
    assert job["webhook_url"] == "https://hooks.example.com/job"
    result = job["result"]
    assert result["content_type"] == "image/png"
    assert result["size_bytes"] == 389148
    assert result["expires_at"] == "2025-06-12T10:15:00Z"
    assert result["encryption"] == {
        "scheme": "kiln-hpke-v1",
        "key_id": "key-1",
        "salt": base64.b64encode(b"\x01" * 16).decode(),
        "sealed_key": base64.b64encode(b"\x02" * 80).decode(),
        "chunk_size": 1048576,
    }
    prefix = "https://kiln.example.com/api/v1/files/"
    assert result["url"].startswith(prefix)
    grant = verify_file_token(result["url"][len(prefix) :], "test-key", now=NOW)
    assert grant.blob_key == f"results/{ACCOUNT}/{JOB}.bin"
    assert grant.content_type == "image/png"


def test_payload_has_exactly_type_timestamp_data() -> None:
    for evt in (completed(), failed(), canceled(), rejected()):
        assert set(rendered(evt)) == {"type", "timestamp", "data"}


def test_payload_is_compact_and_stable() -> None:
    text = payload_for_event(completed(), LINKS, now=NOW)
    assert text == payload_for_event(completed(), LINKS, now=NOW)
    assert ": " not in text and ", " not in text.replace("a lighthouse", "")


def test_failed_job_object() -> None:
    body = rendered(failed())
    assert body["type"] == "job.failed"
    job = body["data"]
    assert job["status"] == "failed"
    assert job["error"] == {
        "code": "INFERENCE_ERROR",
        "message": "The model could not produce an image.",
    }
    assert job["result"] is None
    assert job["cost"] == "0"  # a failed job is never charged
    assert job["completed_at"] == "2025-06-12T09:14:19.312000Z"


def test_credits_rejected_becomes_a_failed_job() -> None:
    body = rendered(rejected())
    assert body["type"] == "job.failed"
    job = body["data"]
    assert job["status"] == "failed"
    assert job["error"]["code"] == "INSUFFICIENT_CREDITS"
    assert "5 credits" in job["error"]["message"]
    assert "1.5 are available" in job["error"]["message"]
    assert job["cost"] == "0"
    assert job["result"] is None
    assert job["completed_at"] == "2025-06-12T09:14:19.312000Z"  # the event's time


def test_canceled_job_object() -> None:
    body = rendered(canceled())
    assert body["type"] == "job.canceled"
    job = body["data"]
    assert job["status"] == "canceled"
    assert job["error"] is None
    assert job["cost"] == "0"
    assert job["metadata"] is None  # "" means no metadata


def test_sandbox_and_missing_optional_parts() -> None:
    evt = completed(sandbox=True, webhook_url="", input_json="not json")
    view = job_view_from_event(evt)
    assert view.sandbox is True
    assert view.webhook_url is None
    assert view.input == {}


def test_created_at_falls_back_to_the_event_time() -> None:
    message = jobs_pb2.JobCanceled(spec=common_pb2.JobSpec(model="m", input_json="{}"))
    view = job_view_from_event(event("job.canceled", message))
    assert view.created_at == OCCURRED
    assert view.completed_at == OCCURRED


def test_non_terminal_events_are_refused() -> None:
    evt = event("job.started", jobs_pb2.JobStarted(attempt=1, worker_id="w"))
    with pytest.raises(UnsupportedEvent):
        job_view_from_event(evt)
    with pytest.raises(UnsupportedEvent):
        webhook_type("job.started")


@pytest.mark.parametrize(
    ("event_type", "kind"),
    [
        ("job.completed", "job.completed"),
        ("job.failed", "job.failed"),
        ("job.canceled", "job.canceled"),
        ("credits.rejected", "job.failed"),
    ],
)
def test_committed_examples_render(event_type: str, kind: str) -> None:
    """The contracts' example events (proto/kiln_contracts/examples) make valid payloads."""
    envelope = from_json(json.loads((EXAMPLES_DIR / f"{event_type}.json").read_text()))
    body = rendered(decode(encode(envelope)))
    assert body["type"] == kind
    assert body["data"]["id"] == envelope.job_id


# ---------------------------------------------------------------------------------------------
# Targets


def test_empty_filter_takes_every_type() -> None:
    assert endpoint_accepts([], "job.canceled")


@pytest.mark.parametrize(
    ("filters", "kind", "accepted"),
    [
        (["job.completed"], "job.completed", True),
        (["job.completed"], "job.failed", False),
        (["job.failed", "job.canceled"], "job.canceled", True),
        (["*"], "job.failed", True),
        (["job.*"], "job.failed", True),
        (["jobs.*"], "job.failed", False),
        (["job.complete"], "job.completed", False),
    ],
)
def test_endpoint_filters(filters: list[str], kind: str, accepted: bool) -> None:
    assert endpoint_accepts(filters, kind) is accepted


def test_delivery_targets() -> None:
    endpoints = [
        EndpointRecord("ep_b", "https://b.example.com/", ("job.completed",)),
        EndpointRecord("ep_a", "https://a.example.com/", ()),
        EndpointRecord("ep_failed_only", "https://c.example.com/", ("job.failed",)),
        EndpointRecord("ep_gone", "https://d.example.com/", (), deleted=True),
        EndpointRecord("default", "", (), is_default=True),
    ]
    assert delivery_targets("job.completed", "https://job.example.com/", endpoints) == [
        DeliveryTarget("", "https://job.example.com/"),
        DeliveryTarget("ep_a", "https://a.example.com/"),
        DeliveryTarget("ep_b", "https://b.example.com/"),
    ]
    assert delivery_targets("job.failed", "", endpoints) == [
        DeliveryTarget("ep_a", "https://a.example.com/"),
        DeliveryTarget("ep_failed_only", "https://c.example.com/"),
    ]
    assert delivery_targets("job.canceled", "", []) == []


# ---------------------------------------------------------------------------------------------
# Retry schedule and outcomes


DEFAULT_SCHEDULE = NotifierSettings().retry_schedule_s


def test_default_schedule_matches_the_design() -> None:
    assert DEFAULT_SCHEDULE == [10, 60, 300, 1800, 7200, 18000, 36000, 36000]


def test_next_attempt_delay_walks_the_schedule_then_gives_up() -> None:
    delays = [next_attempt_delay(attempt, DEFAULT_SCHEDULE) for attempt in range(1, 10)]
    assert delays == [10, 60, 300, 1800, 7200, 18000, 36000, 36000, None]
    assert next_attempt_delay(1, []) is None
    with pytest.raises(ValueError):
        next_attempt_delay(0, DEFAULT_SCHEDULE)


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_delivered(status: int) -> None:
    decision = decide_after_attempt(1, status, DEFAULT_SCHEDULE, NOW)
    assert decision.outcome is AttemptOutcome.DELIVERED
    assert decision.next_attempt_at is None


@pytest.mark.parametrize("status", [None, 199, 301, 302, 400, 404, 429, 500, 503])
def test_anything_else_is_retried(status: int | None) -> None:
    decision = decide_after_attempt(2, status, DEFAULT_SCHEDULE, NOW)
    assert decision.outcome is AttemptOutcome.RETRY
    assert decision.next_attempt_at == NOW + timedelta(seconds=60)


def test_last_attempt_gives_up() -> None:
    last = len(DEFAULT_SCHEDULE) + 1
    assert decide_after_attempt(last, 500, DEFAULT_SCHEDULE, NOW).outcome is AttemptOutcome.GIVE_UP
    assert decide_after_attempt(last, 200, DEFAULT_SCHEDULE, NOW).outcome is (
        AttemptOutcome.DELIVERED
    )


def test_permanent_failure_gives_up_at_once() -> None:
    decision = decide_after_attempt(1, None, DEFAULT_SCHEDULE, NOW, permanent=True)
    assert decision.outcome is AttemptOutcome.GIVE_UP


def test_schedule_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_RETRY_SCHEDULE_S", "[1, 2.5]")
    settings = NotifierSettings()
    assert settings.retry_schedule_s == [1, 2.5]
    assert next_attempt_delay(2, settings.retry_schedule_s) == 2.5
    assert next_attempt_delay(3, settings.retry_schedule_s) is None
    monkeypatch.setenv("KILN_RETRY_SCHEDULE_S", "[-1]")
    with pytest.raises(ValueError):
        NotifierSettings()
