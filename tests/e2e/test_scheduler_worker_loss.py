"""Killing the inference worker mid-job leaves no job stuck, on a stack of its own with short
liveness timeouts: a worker that stays dead gets the job retried (WORKER_LOST) and, with no
worker to take the retries, failed with WORKER_LOST and refunded; once a worker is back, the
next job runs (the lost attempts hold no slot). A lost worker that comes back and completes the
job after the scheduler failed it changes nothing: every consumer sees the failure first. A
broker outage longer than the heartbeat timeout loses no worker: the workers' heartbeats could
not reach the scheduler meanwhile."""

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import WebhookReceiver, wait_until
from tests.kafka_topics import distinct_events, read_events
from tests.stack_support import RunningStack, started_stack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

STACK_ENV = {
    "KILN_WORKER_START_TIMEOUT_S": "3",
    "KILN_WORKER_HEARTBEAT_TIMEOUT_S": "6",
    "KILN_RETRY_BACKOFF_BASE_S": "0.5",
    "KILN_RETRY_BACKOFF_CAP_S": "1",
    "KILN_MAX_ATTEMPTS": "3",
    "KILN_PROGRESS_INTERVAL_S": "1",  # the worker's heartbeat (job.progress)
}


@pytest.fixture(scope="module")
def loss_stack() -> Iterator[RunningStack]:
    root = Path(tempfile.mkdtemp(prefix="kiln-scheduler-stack-"))
    try:
        with started_stack(root, sandbox_delay_ms=200, extra_env=STACK_ENV) as running:
            yield running
    finally:
        shutil.rmtree(root, ignore_errors=True)


def api(running: RunningStack) -> httpx.Client:
    return httpx.Client(
        base_url=running.demo.api_url,
        headers={"Authorization": f"Bearer {running.demo.sandbox_key}"},
        timeout=30,
    )


def submit(client: httpx.Client, delay_s: float, webhook_url: str = "") -> str:
    body: dict[str, Any] = {
        "model": "kiln/prompt-to-image",
        "input": {"prompt": "a worker that falls over"},
        "sandbox": {"outcome": "completed", "delay_s": delay_s},
    }
    if webhook_url:
        body["webhook_url"] = webhook_url
    answer = client.post("/jobs", json=body)
    assert answer.status_code == 202, answer.text
    job_id: str = answer.json()["data"]["id"]
    return job_id


def wait_status(client: httpx.Client, job_id: str, wanted: set[str], timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    data: Any = None
    while time.monotonic() < deadline:
        data = client.get(f"/jobs/{job_id}").json()["data"]
        if data["status"] in wanted:
            return data
        time.sleep(0.1)
    raise AssertionError(f"{job_id} not {wanted} within {timeout_s} s: {data}")


def test_a_dead_worker_gets_the_job_retried_then_failed(loss_stack: RunningStack) -> None:
    local = loss_stack.local
    with api(loss_stack) as client:
        job_id = submit(client, delay_s=60)
        wait_status(client, job_id, {"running"}, 30)
        local.stop_service("inference", sig=signal.SIGKILL)
        try:
            # Silent past the heartbeat timeout, then two retries nobody starts.
            final = wait_status(client, job_id, {"completed", "failed", "canceled"}, 40)
            assert final["status"] == "failed"
            assert final["error"]["code"] == "WORKER_LOST"
            assert final["cost"] == "0"
        finally:
            local.start_service("inference")
            local.wait_ready(["inference"])
        scheduler = httpx.get(f"{local.service_url('scheduler')}/metrics", timeout=5).text
        assert 'error_code="WORKER_LOST"' in scheduler
        assert "kiln_scheduler_workers_lost_total" in scheduler
        # The worker is back and the lost attempts hold no slot: the next job runs.
        after = submit(client, delay_s=0.5)
        final = wait_status(client, after, {"completed", "failed", "canceled"}, 60)
        assert final["status"] == "completed"


@contextmanager
def paused(running: RunningStack, *services: str) -> Iterator[None]:
    """SIGSTOP the services (they read nothing and send nothing) until the block ends."""
    pids = [running.local.pid(service) for service in services]
    assert all(pids), dict(zip(services, pids, strict=True))
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def ends_of(running: RunningStack, job_id: str) -> list[tuple[str, int]]:
    """The job's ends on `job.ended`, in the partition's order: (type, attempt)."""
    return [
        (event.type, getattr(event.message, "attempt", 0))
        for event in read_events(running.local.kafka_bootstrap, ["job.ended"])
        if event.job_id == job_id
    ]


def settlements(running: RunningStack, job_id: str) -> list[str]:
    """Billing's settlements of the job (`credits.captured` / `credits.released`), once each."""
    topics = ("credits.captured", "credits.released")
    return [
        e.type for e in distinct_events(running.local.kafka_bootstrap, topics) if e.job_id == job_id
    ]


def test_a_lost_worker_that_completes_after_the_job_failed_changes_nothing(
    loss_stack: RunningStack, webhook_receiver: WebhookReceiver
) -> None:
    """The race of two deciders: the scheduler fails a job whose worker it thinks lost, and the
    worker, back, completes it. Billing and the notifier are stopped meanwhile, so they read
    both ends in one go: they must read them in the order the gateway did (the failure first),
    and so release the hold, not capture it, and send one `job.failed` webhook."""
    with api(loss_stack) as client:
        job_id = submit(client, delay_s=8, webhook_url=webhook_receiver.url)
        wait_status(client, job_id, {"running"}, 30)
        with paused(loss_stack, "billing", "notifier"):
            with paused(loss_stack, "inference"):
                final = wait_status(client, job_id, {"completed", "failed", "canceled"}, 40)
                assert final["status"] == "failed", final
                assert final["error"]["code"] == "WORKER_LOST"

            # The worker, back, finds Triton's answer waiting (the 8 s are over) and completes
            # the attempt it was running.
            def completed_late() -> list[tuple[str, int]] | None:
                ends = ends_of(loss_stack, job_id)
                return ends if ("job.completed", 1) in ends else None

            ends = wait_until("the late completion", completed_late, timeout_s=60)
            assert ends[0][0] == "job.failed", ends
        wait_until("billing settles the job", lambda: settlements(loss_stack, job_id), 60)
        wait_until("a webhook", lambda: webhook_receiver.for_job(job_id), 60, every_s=0.5)
        time.sleep(3)  # time for a wrong second settlement or webhook to show
        assert settlements(loss_stack, job_id) == ["credits.released"]
        assert {hit.json()["type"] for hit in webhook_receiver.for_job(job_id)} == {"job.failed"}
        assert client.get(f"/jobs/{job_id}").json()["data"]["status"] == "failed"


def workers_lost(running: RunningStack) -> float:
    text = httpx.get(f"{running.local.service_url('scheduler')}/metrics", timeout=5).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "kiln_scheduler_workers_lost"
        for sample in family.samples
        if sample.name == "kiln_scheduler_workers_lost_total"
    )


def test_a_broker_outage_longer_than_the_heartbeat_timeout_loses_no_worker(
    loss_stack: RunningStack,
) -> None:
    heartbeat_timeout_s = float(STACK_ENV["KILN_WORKER_HEARTBEAT_TIMEOUT_S"])
    with api(loss_stack) as client:
        lost_before = workers_lost(loss_stack)
        # Far longer than the test: the worker's heartbeats resume once the broker is back.
        job_id = submit(client, delay_s=300)
        wait_status(client, job_id, {"running"}, 30)
        # Down three heartbeat timeouts, plus the broker's stop and start.
        loss_stack.local.restart_kafka(down_s=3 * heartbeat_timeout_s)
        # Three more heartbeat timeouts with the broker back: its first attempt still runs.
        time.sleep(3 * heartbeat_timeout_s)
        assert workers_lost(loss_stack) == lost_before
        job = client.get(f"/jobs/{job_id}").json()["data"]
        assert job["status"] == "running", job
        assert client.post(f"/jobs/{job_id}/cancel").status_code in (200, 202)
        final = wait_status(client, job_id, {"completed", "failed", "canceled"}, 60)
        assert final["status"] == "canceled", final
