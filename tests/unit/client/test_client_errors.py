"""Every error answer becomes a typed error carrying status, code, message, request id and
details; a failed, canceled or overdue job raises an error that carries the job."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import respx

from kiln_client import (
    APIError,
    BadRequest,
    Conflict,
    ContentPolicy,
    Forbidden,
    InsufficientCredits,
    JobCanceled,
    JobFailed,
    Kiln,
    MissingCredentials,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    Unauthorized,
    Unavailable,
    ValidationError,
)
from kiln_client.errors import error_for_response
from tests.unit.client.conftest import BASE, job_json


def envelope(status: int, code: str, **extra: Any) -> httpx.Response:
    error = {"code": code, "message": f"text of {code}", "request_id": "req_abc", **extra}
    return httpx.Response(status, json={"error": error}, headers={"X-Request-Id": "req_abc"})


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, "BAD_REQUEST", BadRequest),
        (401, "UNAUTHORIZED", Unauthorized),
        (402, "INSUFFICIENT_CREDITS", InsufficientCredits),
        (403, "FORBIDDEN", Forbidden),
        (404, "NOT_FOUND", NotFound),
        (409, "CONFLICT", Conflict),
        (413, "PAYLOAD_TOO_LARGE", PayloadTooLarge),
        (422, "VALIDATION_ERROR", ValidationError),
        (422, "CONTENT_POLICY", ContentPolicy),
        (429, "RATE_LIMITED", RateLimited),
        (503, "UNAVAILABLE", Unavailable),
    ],
)
def test_codes_map_to_types(status: int, code: str, cls: type[APIError]) -> None:
    error = error_for_response(envelope(status, code, details=[{"field": "f", "message": "m"}]))
    assert type(error) is cls
    assert (error.status, error.code, error.message) == (status, code, f"text of {code}")
    assert error.request_id == "req_abc"
    assert error.details == [{"field": "f", "message": "m"}]


def test_an_answer_without_envelope_is_typed_by_status() -> None:
    error = error_for_response(httpx.Response(502, text="<html>bad gateway</html>"))
    assert isinstance(error, ServerError) and error.status == 502
    error = error_for_response(
        httpx.Response(404, text="nope", headers={"X-Request-Id": "req_proxy"})
    )
    assert isinstance(error, NotFound) and error.request_id == "req_proxy"
    assert error.code == "NOT_FOUND"


def test_insufficient_credits_on_submit(kiln: Kiln, api: respx.MockRouter) -> None:
    api.post("/jobs").mock(return_value=envelope(402, "INSUFFICIENT_CREDITS"))
    with pytest.raises(InsufficientCredits) as caught:
        kiln.run("kiln/prompt-to-image", {"prompt": "p"})
    assert caught.value.status == 402 and caught.value.request_id == "req_abc"


def test_no_api_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KILN_API_KEY", raising=False)
    with pytest.raises(MissingCredentials, match="KILN_API_KEY"):
        Kiln(base_url=BASE).usage.get()
    with pytest.raises(MissingCredentials, match="login"):
        Kiln("sk_test_x", base_url=BASE).keys.create("ci")


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_API_KEY", "sk_test_env")
    monkeypatch.setenv("KILN_API_URL", "https://kiln.example.com")
    kiln = Kiln()
    assert kiln.api_key == "sk_test_env"
    assert kiln.base_url == "https://kiln.example.com/api/v1"
    assert Kiln("sk_live_arg", base_url="http://h:1/api/v1/").base_url == "http://h:1/api/v1"


def failed_job(kiln: Kiln, api: respx.MockRouter, status: str, **extra: Any) -> None:
    api.post("/jobs").mock(return_value=httpx.Response(202, json={"data": job_json()}))
    data = json.dumps(job_json(status, **extra))
    api.get(f"/jobs/{job_json()['id']}/events").mock(
        return_value=httpx.Response(
            200,
            headers={"content-type": "text/event-stream"},
            content=f"id: 1\nevent: job\ndata: {data}\n\n",
        )
    )


def test_a_failed_job_raises_with_the_job(kiln: Kiln, api: respx.MockRouter) -> None:
    error = {"code": "INFERENCE_ERROR", "message": "the model failed"}
    failed_job(kiln, api, "failed", error=error)
    with pytest.raises(JobFailed) as caught:
        kiln.run("kiln/prompt-to-image", {"prompt": "p"})
    assert caught.value.job.status == "failed"
    assert caught.value.code == "INFERENCE_ERROR"
    assert caught.value.job.error is not None
    assert caught.value.job.error.message == "the model failed"


def test_a_canceled_job_raises_with_the_job(kiln: Kiln, api: respx.MockRouter) -> None:
    failed_job(kiln, api, "canceled")
    with pytest.raises(JobCanceled) as caught:
        kiln.run("kiln/prompt-to-image", {"prompt": "p"})
    assert caught.value.job.status == "canceled"
