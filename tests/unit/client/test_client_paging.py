"""Auto-paging lists and the events cursor."""

from __future__ import annotations

from typing import Any

import httpx
import respx

from kiln_client import AsyncKiln, Kiln
from tests.unit.client.conftest import job_json


def jobs_page(ids: list[str], page: int, total_pages: int) -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "data": [job_json("completed", id=i) for i in ids],
            "pagination": {
                "page": page,
                "per_page": 2,
                "total_pages": total_pages,
                "total_results": 5,
            },
        },
    )


def pages(request: httpx.Request) -> httpx.Response:
    number = int(request.url.params["page"])
    # A job created meanwhile shifts page 2 by one: job b shows up again and is dropped.
    content = {1: ["a", "b"], 2: ["b", "c"], 3: ["d", "e"]}[number]
    return jobs_page(content, number, 3)


def test_list_pages_through_everything(kiln: Kiln, api: respx.MockRouter) -> None:
    route = api.get("/jobs").mock(side_effect=pages)
    ids = [job.id for job in kiln.jobs.list(status=["completed", "failed"], per_page=2)]
    assert ids == ["a", "b", "c", "d", "e"]
    params = [dict(call.request.url.params) for call in route.calls]
    assert [p["page"] for p in params] == ["1", "2", "3"]
    assert params[0]["status"] == "completed,failed" and params[0]["per_page"] == "2"


def test_list_is_lazy_and_limit_stops_early(kiln: Kiln, api: respx.MockRouter) -> None:
    route = api.get("/jobs").mock(side_effect=pages)
    pager = kiln.jobs.list(per_page=2, limit=2)
    assert route.calls.call_count == 0
    assert [job.id for job in pager] == ["a", "b"]
    assert route.calls.call_count == 1
    first = kiln.jobs.list(per_page=2).first()
    assert first.total_results == 5 and first.total_pages == 3


def test_an_empty_list(kiln: Kiln, api: respx.MockRouter) -> None:
    api.get("/jobs").mock(
        return_value=httpx.Response(
            200,
            json={
                "data": [],
                "pagination": {"page": 1, "per_page": 100, "total_pages": 0, "total_results": 0},
            },
        )
    )
    assert list(kiln.jobs.list()) == []


async def test_async_list_pages(akiln: AsyncKiln, api: respx.MockRouter) -> None:
    api.get("/jobs").mock(side_effect=pages)
    assert [job.id async for job in akiln.jobs.list(per_page=2)] == ["a", "b", "c", "d", "e"]
    await akiln.close()


def feed(request: httpx.Request) -> httpx.Response:
    after = int(request.url.params.get("after", "0"))
    events: list[dict[str, Any]] = [
        {
            "id": str(n),
            "type": "job.created",
            "sandbox": True,
            "occurred_at": None,
            "data": {"job_id": f"job_{n}"},
        }
        for n in range(after + 1, min(after + 2, 5) + 1)
    ]
    return httpx.Response(
        200, json={"data": events, "next": events[-1]["id"] if events else str(after)}
    )


def test_events_follow_the_cursor(kiln: Kiln, api: respx.MockRouter) -> None:
    route = api.get("/events").mock(side_effect=feed)
    events = list(kiln.events.iter(after="1", limit=2))
    assert [e.id for e in events] == ["2", "3", "4", "5"]
    assert events[0].job_id == "job_2"
    afters = [call.request.url.params.get("after") for call in route.calls]
    assert afters == ["1", "3", "5"]
    assert kiln.events.latest_cursor() == "5"


async def test_async_events(akiln: AsyncKiln, api: respx.MockRouter) -> None:
    api.get("/events").mock(side_effect=feed)
    assert [e.id async for e in akiln.events.iter(limit=2)] == ["1", "2", "3", "4", "5"]
    await akiln.close()
