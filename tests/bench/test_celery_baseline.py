"""The Celery + Redis baseline of the benchmarks, on a real Triton, Redis and SQLite.

A module fixture starts Triton with the repo's launcher (deploy/local/stack.py) on free ports;
each test starts the baseline (redis-server, the uvicorn endpoint, a Celery worker), submits
sandbox jobs over HTTP and waits for their webhooks on a small receiver of its own.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from bench.baselines.celery_pipeline.launcher import REDIS_SERVER, CeleryBaseline
from tests.stack_support import LocalStack, StackPorts
from tests.stack_support import stack as stack_module

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which(REDIS_SERVER) is None, reason="redis-server is missing"),
]

PRICE = 5  # kiln/prompt-to-image
WEBHOOK_TIMEOUT_S = 30.0
TRITON_READY_TIMEOUT_S = 180.0


@pytest.fixture(scope="module")
def triton_grpc_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("pytriton", reason="nvidia-pytriton is not installed")
    ports = StackPorts.free()
    stack = LocalStack(tmp_path_factory.mktemp("triton"), ports, sandbox_delay_ms=200)
    url = f"127.0.0.1:{ports.triton_grpc}"
    try:
        stack.start_triton()
        # PyTriton loads the models after the server is up (and gives up after a few tries)
        deadline = time.monotonic() + TRITON_READY_TIMEOUT_S
        while not sandbox_ready(url):
            if not stack.running("triton"):
                pytest.fail(f"Triton exited:\n{stack_module.tail(stack.log_file('triton'))}")
            if time.monotonic() > deadline:
                pytest.fail(f"Triton's sandbox model was not ready in {TRITON_READY_TIMEOUT_S} s")
            time.sleep(0.5)
        yield url
    finally:
        stack.down(discard=True)


def sandbox_ready(url: str) -> bool:
    client = grpcclient.InferenceServerClient(url=url)
    try:
        return bool(client.is_model_ready("sandbox", client_timeout=2.0))
    except InferenceServerException:
        return False
    finally:
        client.close()


class Hooks:
    """A webhook receiver: the events POSTed to ``url``, by job id."""

    def __init__(self) -> None:
        self.events: dict[str, dict[str, Any]] = {}
        self.changed = threading.Condition()
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                event = json.loads(body)
                with hooks.changed:
                    hooks.events[event["data"]["id"]] = event
                    hooks.changed.notify_all()
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, job_ids: list[str], timeout_s: float) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        with self.changed:
            while not set(job_ids) <= self.events.keys() and time.monotonic() < deadline:
                self.changed.wait(0.2)
            return {job: self.events[job] for job in job_ids if job in self.events}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hooks() -> Iterator[Hooks]:
    receiver = Hooks()
    yield receiver
    receiver.close()


def submit(
    client: httpx.Client, baseline: CeleryBaseline, api_key: str, hooks: Hooks, **sandbox: Any
) -> httpx.Response:
    return client.post(
        f"{baseline.url}/jobs",
        headers={"Authorization": f"Bearer {api_key}"},
        json={
            "model": "kiln/prompt-to-image",
            "input": {"prompt": "a kiln at dusk"},
            "webhook_url": hooks.url,
            "sandbox": {"delay_s": 0, **sandbox},
        },
    )


def process_trees(baseline: CeleryBaseline) -> list[psutil.Process]:
    processes = []
    for pid in baseline.processes().values():
        parent = psutil.Process(pid)
        processes += [parent, *parent.children(recursive=True)]
    return processes


def assert_all_gone(processes: list[psutil.Process]) -> None:
    _gone, alive = psutil.wait_procs(processes, timeout=5)
    assert not alive, f"left running: {alive}"


def test_jobs_are_charged_run_on_triton_and_reported_by_webhook(
    triton_grpc_url: str, hooks: Hooks, tmp_path: Path
) -> None:
    baseline = CeleryBaseline(tmp_path / "baseline", triton_grpc_url, echo=lambda _: None)
    with baseline, httpx.Client(timeout=30) as client:
        assert set(baseline.processes()) == {"redis", "celery-api", "celery-worker"}
        processes = process_trees(baseline)
        key = baseline.create_account(27)

        answers = [submit(client, baseline, key, hooks) for _ in range(5)]
        assert [a.status_code for a in answers] == [202] * 5, [a.text for a in answers]
        assert {a.json()["data"]["status"] for a in answers} == {"queued"}
        ids = [a.json()["data"]["id"] for a in answers]
        events = hooks.wait_for(ids, WEBHOOK_TIMEOUT_S)
        assert len(events) == 5, f"webhooks of {len(events)} of 5 jobs arrived"
        for job_id, event in events.items():
            assert event == {"type": "job.completed", "data": {"id": job_id, "status": "completed"}}
        assert baseline.balance(key) == 27 - 5 * PRICE
        assert baseline.job_counts() == {"completed": 5}
        results = sorted((tmp_path / "baseline" / "data" / "results").iterdir())
        assert [path.stem for path in results] == sorted(ids)
        assert all(path.read_bytes().startswith(b"\x89PNG") for path in results)

        # beyond the balance: refused, never charged, never queued
        for _ in range(2):
            refused = submit(client, baseline, key, hooks)
            assert refused.status_code == 402
            assert refused.json()["error"]["code"] == "INSUFFICIENT_CREDITS"
        assert baseline.balance(key) == 27 - 5 * PRICE
        assert baseline.job_counts() == {"completed": 5}

        # a model error fails the job and refunds it
        other = baseline.create_account(PRICE)
        failing = submit(client, baseline, other, hooks, outcome="failed")
        assert failing.status_code == 202
        failed_id = failing.json()["data"]["id"]
        event = hooks.wait_for([failed_id], WEBHOOK_TIMEOUT_S)[failed_id]
        assert event["type"] == "job.failed"
        assert event["data"] == {
            "id": failed_id,
            "status": "failed",
            "error": {"code": "SANDBOX_FAILED"},
        }
        assert baseline.balance(other) == PRICE
        assert baseline.job_counts() == {"completed": 5, "failed": 1}

        # concurrent requests never spend the same credits twice
        racer = baseline.create_account(10 * PRICE)
        with ThreadPoolExecutor(max_workers=20) as pool:
            raced = list(pool.map(lambda _: submit(client, baseline, racer, hooks), range(20)))
        statuses = sorted(answer.status_code for answer in raced)
        assert statuses == [202] * 10 + [402] * 10
        assert baseline.balance(racer) == 0
        raced_ids = [a.json()["data"]["id"] for a in raced if a.status_code == 202]
        assert len(hooks.wait_for(raced_ids, WEBHOOK_TIMEOUT_S)) == 10

        unknown = submit(client, baseline, "sk_test_nobody", hooks)
        assert unknown.status_code == 401
        assert baseline.job_counts() == {"completed": 15, "failed": 1}
    assert baseline.processes() == {}
    assert_all_gone(processes)


def test_prefork_pool(triton_grpc_url: str, hooks: Hooks, tmp_path: Path) -> None:
    # the pool processes fork after the task module is imported: engines and clients are
    # made per process
    baseline = CeleryBaseline(
        tmp_path / "baseline", triton_grpc_url, pool="prefork", worker_concurrency=2
    )
    with baseline, httpx.Client(timeout=30) as client:
        processes = process_trees(baseline)
        assert len(processes) >= 5  # redis, the endpoint, the worker and its 2 children
        key = baseline.create_account(3 * PRICE)
        answers = [submit(client, baseline, key, hooks) for _ in range(3)]
        ids = [answer.json()["data"]["id"] for answer in answers]
        events = hooks.wait_for(ids, WEBHOOK_TIMEOUT_S)
        assert {event["type"] for event in events.values()} == {"job.completed"}
        assert len(events) == 3
        assert baseline.balance(key) == 0
        assert baseline.job_counts() == {"completed": 3}
    assert_all_gone(processes)
