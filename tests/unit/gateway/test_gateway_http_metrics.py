"""The gateway's RED metrics middleware: counted per route template (not per raw path), errors
by status, latency observed, streams not buffered, unmatched paths in one series."""

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from fastapi import FastAPI, HTTPException
from fastapi.responses import StreamingResponse
from prometheus_client import REGISTRY

from kiln_gateway.http_metrics import UNMATCHED, HttpMetrics


def count(route: str, method: str, status: str) -> float:
    value = REGISTRY.get_sample_value(
        "kiln_http_requests_total", {"route": route, "method": method, "status": status}
    )
    return value or 0.0


def observations(route: str, method: str) -> float:
    value = REGISTRY.get_sample_value(
        "kiln_http_request_duration_seconds_count", {"route": route, "method": method}
    )
    return value or 0.0


def make_app() -> FastAPI:
    app = FastAPI()

    @app.get("/things/{thing_id}")
    async def get_thing(thing_id: str) -> dict[str, str]:
        if thing_id == "missing":
            raise HTTPException(404)
        return {"id": thing_id}

    @app.post("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(3):
                yield f"data: {i}\n\n".encode()

        return StreamingResponse(chunks(), media_type="text/event-stream")

    app.add_middleware(HttpMetrics)
    return app


async def test_requests_are_counted_per_route_template_and_status() -> None:
    app = make_app()
    before_ok = count("/things/{thing_id}", "GET", "200")
    before_404 = count("/things/{thing_id}", "GET", "404")
    before_seen = observations("/things/{thing_id}", "GET")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for thing in ("a", "b", "c"):
            assert (await client.get(f"/things/{thing}")).status_code == 200
        assert (await client.get("/things/missing")).status_code == 404
    assert count("/things/{thing_id}", "GET", "200") == before_ok + 3
    assert count("/things/{thing_id}", "GET", "404") == before_404 + 1
    assert observations("/things/{thing_id}", "GET") == before_seen + 4
    # never one series per id
    assert (
        REGISTRY.get_sample_value(
            "kiln_http_requests_total", {"route": "/things/a", "method": "GET", "status": "200"}
        )
        is None
    )


async def test_an_unhandled_error_counts_as_a_500() -> None:
    app = make_app()
    before = count("/boom", "POST", "500")
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.post("/boom")).status_code == 500
    assert count("/boom", "POST", "500") == before + 1


async def test_unknown_paths_share_one_series_and_405_keeps_the_route() -> None:
    app = make_app()
    before_unmatched = count(UNMATCHED, "GET", "404")
    before_405 = count("/boom", "GET", "405")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/no/such/path/1")).status_code == 404
        assert (await client.get("/no/such/path/2")).status_code == 404
        assert (await client.get("/boom")).status_code == 405
    assert count(UNMATCHED, "GET", "404") == before_unmatched + 2
    assert count("/boom", "GET", "405") == before_405 + 1


async def test_a_stream_passes_through_whole() -> None:
    app = make_app()
    before = count("/stream", "GET", "200")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/stream")
    assert response.text == "data: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert count("/stream", "GET", "200") == before + 1


async def test_the_gateway_counts_its_routes_by_template(tmp_path: Path) -> None:
    from tests.unit.gateway.hostile_support import gateway_under_test

    route = "/api/v1/jobs/{job_id}"
    before_404 = count(route, "GET", "404")
    before_401 = count(route, "GET", "401")
    async with gateway_under_test(tmp_path) as gateway:
        missing = await gateway.client.get("/jobs/job_does_not_exist", headers=gateway.auth())
        assert missing.status_code == 404
        assert (await gateway.client.get("/jobs/job_x")).status_code == 401
    assert count(route, "GET", "404") == before_404 + 1
    assert count(route, "GET", "401") == before_401 + 1
