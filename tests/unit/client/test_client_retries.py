"""Retries: which failures, how long between tries, and one Idempotency-Key per call."""

from __future__ import annotations

import httpx
import pytest
import respx

from kiln_client import (
    APIConnectionError,
    AsyncKiln,
    Kiln,
    RateLimited,
    Unavailable,
    ValidationError,
)
from kiln_client._retries import RetryPolicy, retry_after_seconds
from tests.unit.client.conftest import BASE, KEY, Sleeps, job_json

UNAVAILABLE = {"error": {"code": "UNAVAILABLE", "message": "down", "request_id": "req_1"}}


def test_a_retried_submit_sends_one_key_on_every_try(
    kiln: Kiln, api: respx.MockRouter, sleeps: Sleeps
) -> None:
    route = api.post("/jobs").mock(
        side_effect=[
            httpx.ConnectError("refused"),
            httpx.Response(503, json=UNAVAILABLE),
            httpx.ReadTimeout("no answer"),  # the server may have acted: the key makes it safe
            httpx.Response(202, json={"data": job_json()}),
        ]
    )
    job = kiln.jobs.create("kiln/prompt-to-image", {"prompt": "a lighthouse"})
    assert job.status == "queued"
    keys = {call.request.headers["Idempotency-Key"] for call in route.calls}
    assert len(route.calls) == 4 and len(keys) == 1
    assert keys.pop().startswith("kiln-client-")
    assert len(sleeps) == 3
    assert all(call.request.headers["Authorization"] == f"Bearer {KEY}" for call in route.calls)


def test_each_call_gets_its_own_key_and_a_given_key_is_used(
    kiln: Kiln, api: respx.MockRouter
) -> None:
    route = api.post("/jobs").mock(return_value=httpx.Response(202, json={"data": job_json()}))
    kiln.jobs.create("m/x", {})
    kiln.jobs.create("m/x", {})
    kiln.jobs.create("m/x", {}, idempotency_key="order-1234")
    keys = [call.request.headers["Idempotency-Key"] for call in route.calls]
    assert keys[0] != keys[1] and keys[2] == "order-1234"


def test_body_and_prefer_header(kiln: Kiln, api: respx.MockRouter) -> None:
    route = api.post("/jobs").mock(
        return_value=httpx.Response(202, json={"data": job_json("pending")})
    )
    job = kiln.jobs.create(
        "kiln/prompt-to-image",
        {"prompt": "p"},
        metadata={"order": "1"},
        sandbox={"outcome": "failed"},
        respond_async=True,
    )
    assert job.status == "pending" and job.queue_position is None
    request = route.calls.last.request
    assert request.headers["Prefer"] == "respond-async"
    assert httpx.Response(200, content=request.content).json() == {
        "model": "kiln/prompt-to-image",
        "input": {"prompt": "p"},
        "metadata": {"order": "1"},
        "sandbox": {"outcome": "failed"},
    }
    kiln.jobs.create("kiln/prompt-to-image", {"prompt": "p"})
    assert "Prefer" not in route.calls.last.request.headers


def test_retry_after_is_honoured(kiln: Kiln, api: respx.MockRouter, sleeps: Sleeps) -> None:
    limited = httpx.Response(
        429,
        headers={"Retry-After": "7"},
        json={"error": {"code": "RATE_LIMITED", "message": "slow down", "request_id": "r"}},
    )
    api.get("/usage").mock(
        side_effect=[limited, httpx.Response(200, json={"data": {"balance": "1"}})]
    )
    assert str(kiln.usage.get().balance) == "1"
    assert sleeps == [7.0]


def test_a_retry_after_beyond_the_cap_raises_at_once(
    kiln: Kiln, api: respx.MockRouter, sleeps: Sleeps
) -> None:
    api.get("/usage").mock(
        return_value=httpx.Response(
            429,
            headers={"Retry-After": "3600"},
            json={"error": {"code": "RATE_LIMITED", "message": "m", "request_id": "req_9"}},
        )
    )
    with pytest.raises(RateLimited) as caught:
        kiln.usage.get()
    assert caught.value.retry_after == 3600
    assert caught.value.request_id == "req_9"
    assert sleeps == []


def test_backoff_grows_with_jitter_and_gives_up(
    kiln: Kiln, api: respx.MockRouter, sleeps: Sleeps
) -> None:
    route = api.get("/models").mock(return_value=httpx.Response(503, json=UNAVAILABLE))
    with pytest.raises(Unavailable) as caught:
        kiln.models.list()
    assert len(route.calls) == 4  # one try and three retries
    assert caught.value.status == 503 and caught.value.code == "UNAVAILABLE"
    assert 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0 and 1.0 <= sleeps[2] <= 2.0


def test_backoff_is_capped_and_jittered() -> None:
    policy = RetryPolicy(max_retries=10, initial_delay=0.5, max_delay=8.0)
    waits = [policy.backoff(n) for n in range(1, 11)]
    assert all(4.0 <= w <= 8.0 for w in waits[5:])
    assert len({round(w, 6) for w in waits}) > 5


def test_client_errors_are_not_retried(kiln: Kiln, api: respx.MockRouter) -> None:
    route = api.post("/jobs").mock(
        return_value=httpx.Response(
            422,
            json={
                "error": {
                    "code": "VALIDATION_ERROR",
                    "message": "The request has invalid fields.",
                    "request_id": "req_422",
                    "details": [{"field": "input.prompt", "message": "is required"}],
                }
            },
        )
    )
    with pytest.raises(ValidationError) as caught:
        kiln.jobs.create("kiln/prompt-to-image", {})
    assert len(route.calls) == 1
    assert caught.value.details == [{"field": "input.prompt", "message": "is required"}]
    assert "input.prompt: is required" in str(caught.value) and "req_422" in str(caught.value)


def test_500_is_not_retried(kiln: Kiln, api: respx.MockRouter) -> None:
    route = api.get("/usage").mock(
        return_value=httpx.Response(
            500, json={"error": {"code": "INTERNAL_ERROR", "message": "bug", "request_id": "r"}}
        )
    )
    with pytest.raises(Exception, match="INTERNAL_ERROR"):
        kiln.usage.get()
    assert len(route.calls) == 1


def test_unsafe_posts_retry_only_what_surely_did_not_act(kiln: Kiln, api: respx.MockRouter) -> None:
    # A lost answer to "create an endpoint" is not replayed: it could make a second endpoint.
    route = api.post("/webhooks").mock(side_effect=httpx.ReadTimeout("lost"))
    with pytest.raises(APIConnectionError):
        kiln.webhooks.create("https://example.com/hook")
    assert len(route.calls) == 1
    api.reset()
    route = api.post("/webhooks").mock(return_value=httpx.Response(502))
    with pytest.raises(Exception, match="502"):
        kiln.webhooks.create("https://example.com/hook")
    assert len(route.calls) == 1
    api.reset()
    created = {"data": {"id": "we_1", "url": "https://example.com/hook", "secret": "whsec_x"}}
    route = api.post("/webhooks").mock(
        side_effect=[httpx.ConnectError("refused"), httpx.Response(201, json=created)]
    )
    assert kiln.webhooks.create("https://example.com/hook").secret == "whsec_x"
    assert len(route.calls) == 2


def test_total_timeout_bounds_a_call_with_its_retries(api: respx.MockRouter) -> None:
    kiln = Kiln(KEY, base_url=BASE, max_retries=100, total_timeout=0.3)
    route = api.get("/usage").mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(APIConnectionError):
        kiln.usage.get()
    assert 1 <= len(route.calls) < 100


def test_with_options_changes_one_call(kiln: Kiln, api: respx.MockRouter) -> None:
    route = api.get("/usage").mock(return_value=httpx.Response(503, json=UNAVAILABLE))
    with pytest.raises(Unavailable):
        kiln.with_options(max_retries=0).usage.get()
    assert len(route.calls) == 1
    assert kiln._http.options.retry.max_retries == 3


def test_timeout_applies_to_each_attempt(api: respx.MockRouter) -> None:
    kiln = Kiln(KEY, base_url=BASE, timeout=2.5)
    route = api.get("/usage").mock(return_value=httpx.Response(200, json={"data": {}}))
    kiln.usage.get()
    assert route.calls.last.request.extensions["timeout"]["read"] == 2.5


def test_retry_after_parsing() -> None:
    assert retry_after_seconds({"Retry-After": "3"}) == 3
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0
    assert retry_after_seconds({"Retry-After": "soon"}) is None
    assert retry_after_seconds({}) is None


async def test_async_twin_retries_with_one_key(
    akiln: AsyncKiln, api: respx.MockRouter, sleeps: Sleeps
) -> None:
    route = api.post("/jobs").mock(
        side_effect=[
            httpx.RemoteProtocolError("reset"),
            httpx.Response(504),
            httpx.Response(202, json={"data": job_json()}),
        ]
    )
    job = await akiln.jobs.create("kiln/prompt-to-image", {"prompt": "p"})
    assert job.id == "job_" + "1" * 32
    assert len({c.request.headers["Idempotency-Key"] for c in route.calls}) == 1
    assert len(route.calls) == 3 and len(sleeps) == 2
    await akiln.close()
