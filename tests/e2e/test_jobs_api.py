"""The job API beyond the happy path: list/filter/sort/count, quote, cancel, the event
stream, usage and the event feed, and Idempotency-Key — on the real stack."""

import concurrent.futures
import json
import time
from typing import Any

import httpx
import pytest

from tests.e2e.test_happy_path import admin, client, wait_for_final

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def fresh_account(stack: dict[str, str]) -> dict[str, str]:
    """An account of its own (so counts are exact) with 100 credits, a live and a sandbox key."""
    with admin(stack) as operator:
        account = operator.post(
            "/admin/accounts",
            json={"email": f"jobs-{time.time_ns()}@example.com", "password": "correct horse"},
        ).json()["data"]
        operator.post(f"/admin/accounts/{account['id']}/credits", json={"amount": "100"})
        keys = {
            kind: operator.post(
                f"/admin/accounts/{account['id']}/keys",
                json={"name": kind, "sandbox": kind == "sandbox"},
            ).json()["data"]["secret"]
            for kind in ("live", "sandbox")
        }
    return {**stack, "LIVE": keys["live"], "SANDBOX": keys["sandbox"]}


def sandbox_job(api: httpx.Client, delay_s: float = 0.0, **extra: Any) -> httpx.Response:
    body = {
        "model": "kiln/prompt-to-image",
        "input": {"prompt": "a quiet harbour"},
        "sandbox": {"outcome": "completed", "delay_s": delay_s},
        **extra,
    }
    return api.post("/jobs", json=body)


def test_list_filter_sort_count_and_paginate(fresh_account: dict[str, str]) -> None:
    with client(fresh_account, fresh_account["SANDBOX"]) as api:
        ids = [sandbox_job(api).json()["data"]["id"] for _ in range(3)]
        for job_id in ids:
            assert wait_for_final(api, job_id)["status"] == "completed"
        page = api.get("/jobs", params={"per_page": 2, "sort": "created_at"}).json()
        assert [j["id"] for j in page["data"]] == ids[:2]
        assert page["pagination"] == {
            "page": 1,
            "per_page": 2,
            "total_pages": 2,
            "total_results": 3,
        }
        second = api.get("/jobs", params={"per_page": 2, "page": 2, "sort": "created_at"})
        assert [j["id"] for j in second.json()["data"]] == ids[2:]
        newest_first = api.get("/jobs", params={"sort": "-created_at"}).json()["data"]
        assert [j["id"] for j in newest_first] == ids[::-1]
        count = api.get("/jobs/count", params={"status": "completed"}).json()["data"]["count"]
        assert count == 3
        assert api.get("/jobs/count", params={"status": "failed"}).json()["data"]["count"] == 0
        assert api.get("/jobs/count", params={"model": "kiln/text-to-speech"}).json() == {
            "data": {"count": 0}
        }
        bad = api.get("/jobs", params={"sort": "password"})
        assert bad.status_code == 422 and bad.json()["error"]["details"][0]["field"] == "sort"
        assert api.get("/jobs", params={"per_page": 101}).status_code == 422
        assert api.get("/jobs", params={"status": "exploded"}).status_code == 422


def test_quote_prices_without_creating(fresh_account: dict[str, str]) -> None:
    with client(fresh_account, fresh_account["LIVE"]) as api:
        before = api.get("/jobs/count").json()["data"]["count"]
        quote = api.post(
            "/jobs/quote", json={"model": "kiln/text-to-speech", "input": {"text": "hi"}}
        )
        assert quote.json()["data"] == {
            "model": "kiln/text-to-speech",
            "sandbox": False,
            "price": "2",
        }
        assert api.post("/jobs/quote", json={"model": "x/y", "input": {}}).status_code == 422
        assert api.get("/jobs/count").json()["data"]["count"] == before


def test_cancel_a_queued_job_refunds_it_and_a_finished_one_is_409(
    fresh_account: dict[str, str],
) -> None:
    with client(fresh_account, fresh_account["SANDBOX"]) as api:
        # Fill the sandbox pool (capacity 8) with slow jobs so that the next one waits.
        blockers = [sandbox_job(api, delay_s=6).json()["data"]["id"] for _ in range(8)]
        waiting = sandbox_job(api, delay_s=0).json()["data"]
        deadline = time.monotonic() + 10
        while api.get(f"/jobs/{waiting['id']}").json()["data"]["status"] != "queued":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        canceled = api.post(f"/jobs/{waiting['id']}/cancel")
        assert canceled.status_code in (200, 202)
        final = wait_for_final(api, waiting["id"])
        assert final["status"] == "canceled"
        assert final["cost"] == "0"
        assert api.post(f"/jobs/{waiting['id']}/cancel").status_code == 409
        for job_id in blockers:
            assert wait_for_final(api, job_id)["status"] == "completed"
        missing = api.post("/jobs/job_00000000000000000000000000000000/cancel")
        assert missing.status_code == 404


def test_event_stream_follows_the_job_to_its_end(fresh_account: dict[str, str]) -> None:
    with client(fresh_account, fresh_account["SANDBOX"]) as api:
        job_id = sandbox_job(api, delay_s=1).json()["data"]["id"]
        statuses = []
        with api.stream("GET", f"/jobs/{job_id}/events", timeout=30) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    statuses.append(json.loads(line[6:])["status"])
        assert statuses[-1] == "completed"
        assert "running" in statuses
        assert statuses.index("running") < statuses.index("completed")


def test_usage_stats_and_event_feed(fresh_account: dict[str, str]) -> None:
    with client(fresh_account, fresh_account["LIVE"]) as api:
        job_id = api.post(
            "/jobs", json={"model": "kiln/text-to-speech", "input": {"text": "usage"}}
        ).json()["data"]["id"]
        assert wait_for_final(api, job_id)["status"] == "completed"
        # Billing's capture reaches the gateway's read model after the job's end (two hops).
        deadline = time.monotonic() + 60
        while api.get("/usage").json()["data"]["reserved"] != "0":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        usage = api.get("/usage").json()["data"]
        assert usage["spent_this_period"] == "2"
        assert usage["balance"] == "98"
        assert usage["jobs"]["live"] == {"completed": 1}
        assert usage["jobs"]["sandbox"].get("completed", 0) >= 1
        by_model = api.get("/usage/stats", params={"group_by": "model"}).json()["data"]
        speech = next(row for row in by_model if row["key"] == "kiln/text-to-speech")
        assert speech["live"] == {"jobs": 1, "completed": 1, "failed": 0, "spent": "2"}
        by_day = api.get("/usage/stats").json()["data"]
        assert sum(row["sandbox"]["jobs"] for row in by_day) >= 1
        assert sum(row["live"]["spent"] == "2" for row in by_day) == 1
        feed = api.get("/events", params={"limit": 500}).json()
        mine = [e for e in feed["data"] if e["data"]["job_id"] == job_id]
        assert mine[0]["type"] == "job.created"
        assert mine[-1]["type"] in ("job.completed", "credits.captured")
        later = api.get("/events", params={"after": feed["next"]}).json()
        assert later["data"] == [] and later["next"] == feed["next"]
        assert api.get("/events", params={"after": "abc"}).status_code == 422


def test_idempotency_key_replays_and_races(fresh_account: dict[str, str]) -> None:
    with client(fresh_account, fresh_account["SANDBOX"]) as api:
        before = api.get("/jobs/count").json()["data"]["count"]
        body = {"model": "kiln/prompt-to-image", "input": {"prompt": "same"}}
        key = f"order-{time.time_ns()}"
        one = api.post("/jobs", json=body, headers={"Idempotency-Key": key})
        two = api.post("/jobs", json=body, headers={"Idempotency-Key": key})
        assert one.status_code == two.status_code == 202
        assert one.json()["data"]["id"] == two.json()["data"]["id"]
        assert two.headers.get("idempotent-replayed") == "true"
        other = api.post(
            "/jobs", json={**body, "input": {"prompt": "other"}}, headers={"Idempotency-Key": key}
        )
        assert other.status_code == 409 and other.json()["error"]["code"] == "CONFLICT"
        long_key = api.post("/jobs", json=body, headers={"Idempotency-Key": "k" * 256})
        assert long_key.status_code == 400
        race_key = f"race-{time.time_ns()}"

        def post() -> httpx.Response:
            with client(fresh_account, fresh_account["SANDBOX"]) as racer:
                return racer.post("/jobs", json=body, headers={"Idempotency-Key": race_key})

        with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
            answers = list(pool.map(lambda _: post(), range(6)))
        assert {a.status_code for a in answers} == {202}
        assert len({a.json()["data"]["id"] for a in answers}) == 1
        assert api.get("/jobs/count").json()["data"]["count"] == before + 2


def test_another_accounts_job_is_404_on_every_route(
    stack: dict[str, str], fresh_account: dict[str, str]
) -> None:
    with client(fresh_account, fresh_account["SANDBOX"]) as owner:
        job_id = sandbox_job(owner, delay_s=0).json()["data"]["id"]
    with client(stack, stack["KILN_DEMO_SANDBOX_KEY"]) as stranger:
        for method, path in [
            ("GET", f"/jobs/{job_id}"),
            ("GET", f"/jobs/{job_id}/events"),
            ("POST", f"/jobs/{job_id}/cancel"),
        ]:
            answer = stranger.request(method, path)
            assert answer.status_code == 404, (method, path, answer.text)
            assert answer.json()["error"]["code"] == "NOT_FOUND"
        listed = stranger.get("/jobs", params={"per_page": 100}).json()["data"]
        assert job_id not in {j["id"] for j in listed}
        deliveries = stranger.get("/webhooks/deliveries", params={"job_id": job_id})
        assert deliveries.status_code in (200, 404)
        if deliveries.status_code == 200:
            assert deliveries.json()["data"] == []
