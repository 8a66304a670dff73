"""The scheduler on the running stack: the sandbox "timeout" outcome fails with TIMEOUT at the
job's deadline and is refunded; a queued job explains itself (position, reason, ETA) and the
explanation moves with the queue; the per-account concurrency limit leaves room for another
account; a running job's cancel goes through canceling to canceled."""

import concurrent.futures
import time
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.e2e.test_happy_path import admin, client, wait_for_final

pytestmark = pytest.mark.e2e


def new_account(stack: dict[str, str], name: str) -> dict[str, str]:
    with admin(stack) as operator:
        account = operator.post(
            "/admin/accounts",
            json={"email": f"{name}-{time.time_ns()}@example.com", "password": "correct horse"},
        ).json()["data"]
        operator.post(f"/admin/accounts/{account['id']}/credits", json={"amount": "100"})
        secret = operator.post(
            f"/admin/accounts/{account['id']}/keys", json={"name": name, "sandbox": True}
        ).json()["data"]["secret"]
    return {**stack, "SANDBOX": secret}


def submit(api: httpx.Client, outcome: str = "completed", delay_s: float = 0.0) -> str:
    answer = api.post(
        "/jobs",
        json={
            "model": "kiln/prompt-to-image",
            "input": {"prompt": "a queue of lighthouses"},
            "sandbox": {"outcome": outcome, "delay_s": delay_s},
        },
    )
    assert answer.status_code == 202, answer.text
    job_id: str = answer.json()["data"]["id"]
    return job_id


def job(api: httpx.Client, job_id: str) -> dict[str, Any]:
    data: dict[str, Any] = api.get(f"/jobs/{job_id}").json()["data"]
    return data


def test_sandbox_timeout_fails_at_the_deadline_with_timeout(stack: dict[str, str]) -> None:
    account = new_account(stack, "timeout")
    with client(account, account["SANDBOX"]) as api:
        job_id = submit(api, outcome="timeout", delay_s=1.5)
        final = wait_for_final(api, job_id, timeout_s=30)
        assert final["status"] == "failed"
        assert final["error"]["code"] == "TIMEOUT"
        assert final["cost"] == "0"
        assert final["result"] is None
        # Failed at the deadline (1.5 s after it was made, by the server's clock), not before.
        created = datetime.fromisoformat(final["created_at"].replace("Z", "+00:00"))
        ended = datetime.fromisoformat(final["completed_at"].replace("Z", "+00:00"))
        assert (ended - created).total_seconds() >= 1.0, final
        # Nothing reserved stays behind: the reservation was released (billing's release
        # reaches the gateway's read model after the job's end, two hops).
        deadline = time.monotonic() + 60
        while api.get("/usage").json()["data"]["reserved"] != "0":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        # A later look still says TIMEOUT (no late completion overrides it).
        time.sleep(1.0)
        assert job(api, job_id)["error"]["code"] == "TIMEOUT"


def test_a_queued_job_explains_itself_as_the_queue_moves(stack: dict[str, str]) -> None:
    """One account may run 4 sandbox jobs at once (the default limit): of 12 submitted at once,
    8 wait with reason concurrency_limit, a position that falls as the queue moves, and an
    ETA."""
    account = new_account(stack, "queue")
    with client(account, account["SANDBOX"]) as api:
        with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
            ids = list(pool.map(lambda _: submit(api, delay_s=2.0), range(12)))
        # A 202 comes with billing's reservation (`queued`, no position yet); the position
        # comes with the scheduler's job.queued, a hop later: look until one shows it.
        looks: list[dict[str, Any]] = []
        waiting: list[dict[str, Any]] = []
        deadline = time.monotonic() + 30
        while not waiting and time.monotonic() < deadline:
            looks = [job(api, job_id) for job_id in ids]
            waiting = [j for j in looks if j["status"] == "queued" and j["queue_position"]]
            if not waiting:
                time.sleep(0.1)
        assert waiting, looks
        first = max(waiting, key=lambda j: j["queue_position"])
        last = first["id"]
        seen: list[tuple[str, Any, Any, Any]] = [
            (
                first["status"],
                first["queue_position"],
                first["queue_reason"],
                first["estimated_start_at"],
            )
        ]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            data = job(api, last)
            seen.append(
                (
                    data["status"],
                    data["queue_position"],
                    data["queue_reason"],
                    data["estimated_start_at"],
                )
            )
            if data["status"] in ("running", "completed"):
                break
            time.sleep(0.1)
        queued = [s for s in seen if s[0] == "queued" and s[1] is not None]
        assert queued, seen
        assert {s[2] for s in queued} == {"concurrency_limit"}
        positions = [s[1] for s in queued]
        assert positions == sorted(positions, reverse=True)
        if positions[0] >= 5:  # it waited for more than one round of 4: it saw the queue move
            assert min(positions) < positions[0], positions
        assert all(isinstance(s[3], str) and s[3].endswith("Z") for s in queued)
        for job_id in ids:
            final = wait_for_final(api, job_id)
            assert final["status"] == "completed"
            assert final["queue_position"] is None and final["queue_reason"] is None


def test_the_concurrency_limit_leaves_room_for_another_account(stack: dict[str, str]) -> None:
    heavy = new_account(stack, "heavy")
    light = new_account(stack, "light")
    with client(heavy, heavy["SANDBOX"]) as h, client(light, light["SANDBOX"]) as lt:
        # Rounds of 3 s: the light account's jobs (submitted, run, seen completed) must be
        # done before two rounds of the heavy one's are, with room for a loaded machine.
        heavy_ids = [submit(h, delay_s=3.0) for _ in range(12)]
        time.sleep(0.5)
        light_ids = [submit(lt, delay_s=0.2) for _ in range(2)]
        for job_id in light_ids:
            assert wait_for_final(lt, job_id, timeout_s=20)["status"] == "completed"
        # The light account finished while most of the heavy one's jobs still waited or ran.
        statuses = [job(h, job_id)["status"] for job_id in heavy_ids]
        assert statuses.count("completed") <= 8, statuses
        running = statuses.count("running")
        assert running <= 4, statuses
        for job_id in heavy_ids:
            assert wait_for_final(h, job_id)["status"] == "completed"


def test_cancel_of_a_running_job_goes_through_canceling(stack: dict[str, str]) -> None:
    account = new_account(stack, "cancel")
    with client(account, account["SANDBOX"]) as api:
        job_id = submit(api, delay_s=20)
        deadline = time.monotonic() + 20
        while job(api, job_id)["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        answer = api.post(f"/jobs/{job_id}/cancel")
        # 202 canceling, or 200 canceled when the worker confirmed within the gateway's wait.
        assert (answer.status_code, answer.json()["data"]["status"]) in (
            (202, "canceling"),
            (200, "canceled"),
        )
        final = wait_for_final(api, job_id, timeout_s=20)
        assert final["status"] == "canceled"
        assert final["cost"] == "0" and final["result"] is None
        feed = api.get("/events", params={"limit": 500}).json()["data"]
        kinds = [e["type"] for e in feed if e["data"]["job_id"] == job_id]
        assert "job.started" in kinds
        assert kinds.index("job.canceling") < kinds.index("job.canceled"), kinds
