"""Following a job: its SSE stream, the fallback to polling when the stream drops or ends
early, on_update, handles, timeouts (with cancel), in both clients."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import respx

from kiln_client import AsyncKiln, Job, Kiln, WaitTimeout
from tests.unit.client.conftest import Sleeps, job_json

JOB_ID = job_json()["id"]
EVENTS = f"/jobs/{JOB_ID}/events"
SSE = {"content-type": "text/event-stream"}


def frame(job: dict[str, Any], n: int) -> bytes:
    return f"id: {n}\nevent: job\ndata: {json.dumps(job)}\n\n".encode()


def broken_stream(*jobs: dict[str, Any]) -> Iterator[bytes]:
    for n, job in enumerate(jobs, 1):
        yield frame(job, n)
    raise httpx.RemoteProtocolError("the gateway went away")


async def abroken_stream(*jobs: dict[str, Any]) -> AsyncIterator[bytes]:
    for n, job in enumerate(jobs, 1):
        yield frame(job, n)
    raise httpx.RemoteProtocolError("the gateway went away")


RUNNING = job_json("running", progress=0.5, started_at="2026-11-21T09:15:00Z")
DONE = job_json("completed", progress=1.0)


def test_run_follows_the_stream(kiln: Kiln, api: respx.MockRouter) -> None:
    api.post("/jobs").mock(return_value=httpx.Response(202, json={"data": job_json()}))
    body = b"".join([frame(job_json(), 1), b": keep-alive\n\n", frame(RUNNING, 2), frame(DONE, 3)])
    stream = api.get(EVENTS).mock(return_value=httpx.Response(200, headers=SSE, content=body))
    poll = api.get(f"/jobs/{JOB_ID}")
    seen: list[Job] = []
    job = kiln.run("kiln/prompt-to-image", {"prompt": "p"}, on_update=seen.append)
    assert job.status == "completed"
    # The submitted job, then each change (the stream's repeat of `queued` is not one).
    assert [(j.status, j.progress, j.queue_position) for j in seen] == [
        ("queued", 0.0, 3),
        ("running", 0.5, None),
        ("completed", 1.0, None),
    ]
    assert stream.calls.call_count == 1 and poll.calls.call_count == 0
    assert stream.calls.last.request.headers["Accept"] == "text/event-stream"


def test_a_dropped_stream_falls_back_to_polling(
    kiln: Kiln, api: respx.MockRouter, sleeps: Sleeps
) -> None:
    api.post("/jobs").mock(return_value=httpx.Response(202, json={"data": job_json()}))
    api.get(EVENTS).mock(
        return_value=httpx.Response(200, headers=SSE, content=broken_stream(job_json(), RUNNING))
    )
    poll = api.get(f"/jobs/{JOB_ID}").mock(
        side_effect=[
            httpx.Response(200, json={"data": RUNNING}),
            httpx.Response(200, json={"data": RUNNING}),
            httpx.Response(200, json={"data": DONE}),
        ]
    )
    seen: list[str] = []
    job = kiln.run("m/x", {}, on_update=lambda j: seen.append(j.status))
    assert job.status == "completed"
    assert seen == ["queued", "running", "completed"]
    assert poll.calls.call_count == 3
    assert sleeps[:2] == [0.5, 0.75]  # polls back off


def test_a_stream_that_ends_early_or_fails_to_open_falls_back(
    kiln: Kiln, api: respx.MockRouter
) -> None:
    api.get(EVENTS).mock(
        side_effect=[
            httpx.Response(200, headers=SSE, content=frame(RUNNING, 1)),  # closed, not done
        ]
    )
    api.get(f"/jobs/{JOB_ID}").mock(return_value=httpx.Response(200, json={"data": DONE}))
    assert kiln.jobs.wait(JOB_ID).status == "completed"
    api.reset()
    api.get(EVENTS).mock(return_value=httpx.Response(502))
    assert kiln.jobs.wait(JOB_ID).status == "completed"


def test_the_handle(kiln: Kiln, api: respx.MockRouter) -> None:
    api.post("/jobs").mock(return_value=httpx.Response(202, json={"data": job_json("pending")}))
    api.get(EVENTS).mock(
        return_value=httpx.Response(
            200, headers=SSE, content=frame(job_json(), 1) + frame(RUNNING, 2) + frame(DONE, 3)
        )
    )
    api.get(f"/jobs/{JOB_ID}").mock(return_value=httpx.Response(200, json={"data": RUNNING}))
    api.post(f"/jobs/{JOB_ID}/cancel").mock(
        return_value=httpx.Response(202, json={"data": job_json("canceling")})
    )
    handle = kiln.submit("m/x", {}, respond_async=True)
    assert handle.status == "pending"
    assert handle.refresh().status == "running"
    assert handle.cancel().status == "canceling"
    handle.job = Job.from_dict(job_json("pending"))
    assert [j.status for j in handle] == ["pending", "queued", "running", "completed"]
    assert handle.status == "completed"


def test_wait_timeout_carries_the_job_and_may_cancel(
    kiln: Kiln, api: respx.MockRouter, sleeps: Sleeps
) -> None:
    api.post("/jobs").mock(return_value=httpx.Response(202, json={"data": job_json()}))
    api.get(EVENTS).mock(return_value=httpx.Response(200, headers=SSE, content=b""))
    api.get(f"/jobs/{JOB_ID}").mock(return_value=httpx.Response(200, json={"data": job_json()}))
    cancel = api.post(f"/jobs/{JOB_ID}/cancel").mock(
        return_value=httpx.Response(200, json={"data": job_json("canceled")})
    )
    with pytest.raises(WaitTimeout) as caught:
        kiln.run("m/x", {}, timeout=0.0)
    assert caught.value.job.status == "queued" and cancel.calls.call_count == 0
    with pytest.raises(WaitTimeout) as caught:
        kiln.run("m/x", {}, timeout=0.0, cancel_on_timeout=True)
    assert caught.value.job.status == "canceled" and cancel.calls.call_count == 1


def test_a_job_that_finished_before_the_wait(kiln: Kiln, api: respx.MockRouter) -> None:
    stream = api.get(EVENTS)
    done = Job.from_dict(DONE)
    assert kiln.jobs.wait(JOB_ID, first=done) is done
    assert stream.calls.call_count == 0


async def test_async_run_falls_back_to_polling(
    akiln: AsyncKiln, api: respx.MockRouter, sleeps: Sleeps
) -> None:
    api.post("/jobs").mock(return_value=httpx.Response(202, json={"data": job_json()}))
    api.get(EVENTS).mock(
        return_value=httpx.Response(200, headers=SSE, content=abroken_stream(RUNNING))
    )
    api.get(f"/jobs/{JOB_ID}").mock(
        side_effect=[
            httpx.Response(200, json={"data": RUNNING}),
            httpx.Response(200, json={"data": DONE}),
        ]
    )
    seen: list[str] = []

    async def on_update(job: Any) -> None:
        seen.append(job.status)

    job = await akiln.run("m/x", {}, on_update=on_update)
    assert job.status == "completed" and seen == ["queued", "running", "completed"]
    await akiln.close()


async def test_async_handle_iterates(akiln: AsyncKiln, api: respx.MockRouter) -> None:
    api.post("/jobs").mock(return_value=httpx.Response(202, json={"data": job_json()}))
    api.get(EVENTS).mock(
        return_value=httpx.Response(200, headers=SSE, content=frame(RUNNING, 1) + frame(DONE, 2))
    )
    handle = await akiln.submit("m/x", {})
    assert [j.status async for j in handle] == ["queued", "running", "completed"]
    await akiln.close()
