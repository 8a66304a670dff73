"""Every dashboard query and alert expression against real metrics: a local stack (Kafka,
Triton, the five services) scraped by Debian's Prometheus runs live and sandbox jobs that take
each path the panels show (completed, failed, timed out, canceled, refused for credits, a
webhook given up, a dead-lettered event), then each dashboard query must return data and each
alert expression must evaluate. The probe paths of deploy/k8s are asked of the running
services too."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.deploy.deploy_support import K8S, REPO, SERVICES, named, render, workloads
from tests.stack_support import LocalStack, StackPorts, free_port, load_env_file

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

DASHBOARDS = K8S / "base" / "monitoring" / "dashboards"
ALERTS = K8S / "base" / "monitoring" / "alerts.yaml"
# Series no local component exports yet, each with the reason; a query that names one of them
# only has to evaluate. Once the code declares one, it must return data like the others.
NOT_LOCAL = {
    "kafka_consumergroup_lag": "Strimzi's Kafka Exporter; the local stack runs no exporter",
}
STACK_ENV = {
    "KILN_RETRY_SCHEDULE_S": "[0.5]",  # one quick retry, then the delivery is given up
    "KILN_DELIVERY_TIMEOUT_S": "3",
    "KILN_DELIVERY_LEASE_S": "6",
    "KILN_LEDGER_GAUGES_INTERVAL_S": "1",
    "KILN_METRICS_REFRESH_S": "1",
}


def load_prometheus_module() -> Any:
    path = REPO / "deploy" / "local" / "kiln_stack" / "prometheus.py"
    spec = importlib.util.spec_from_file_location("kiln_local_prometheus_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Receiver:
    """Webhook receivers on loopback: one answers 204, the other 500 (always)."""

    def __init__(self, status: int) -> None:
        self.hits = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                receiver.hits += 1
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    root: Path = tmp_path_factory.mktemp("kiln-observed")
    stack = LocalStack(root, StackPorts.free(), sandbox_delay_ms=300, extra_env=STACK_ENV)
    prometheus = load_prometheus_module().LocalPrometheus(
        stack, port=free_port(), scrape_interval_s=1
    )
    try:
        stack.up()
        prometheus.start()
        run_workload(stack)
        yield stack, prometheus
    finally:
        prometheus.stop()
        stack.down(discard=not os.environ.get("KILN_KEEP_STACK"))


def wait_job(client: httpx.Client, key: str, job_id: str, timeout_s: float = 180.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"})
        status = str(job.json()["data"]["status"])
        if status in ("completed", "failed", "canceled"):
            return status
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not end within {timeout_s:.0f} s")


def run_workload(stack: Any) -> None:
    demo = load_env_file(stack.root / "demo.env")
    live, sandbox = demo["KILN_DEMO_LIVE_KEY"], demo["KILN_DEMO_SANDBOX_KEY"]
    admin = {"Authorization": f"Bearer {demo['KILN_ADMIN_TOKEN']}"}
    ok, failing = Receiver(204), Receiver(500)
    with httpx.Client(base_url=stack.api_url, timeout=30.0) as client:

        def submit(key: str, body: dict[str, Any], **headers: str) -> httpx.Response:
            return client.post(
                "/jobs", json=body, headers={"Authorization": f"Bearer {key}", **headers}
            )

        speech = {"model": "kiln/text-to-speech", "input": {"text": "Kiln metrics."}}
        jobs = []
        made = submit(live, {**speech, "webhook_url": ok.url})
        assert made.status_code == 202, made.text
        jobs.append((live, made.json()["data"]["id"], "completed"))
        for outcome, hook in (("completed", failing.url), ("failed", None), ("timeout", None)):
            body: dict[str, Any] = {
                "model": "kiln/prompt-to-image",
                "input": {"prompt": "a kiln at dusk"},
                "sandbox": {"outcome": outcome, "delay_s": 1},
            }
            if hook:
                body["webhook_url"] = hook
            made = submit(sandbox, body)
            assert made.status_code == 202, made.text
            jobs.append((sandbox, made.json()["data"]["id"], "failed" if outcome != "completed"
                         else "completed"))  # fmt: skip
        # A live job canceled at once: its reservation is released.
        made = submit(live, speech, Prefer="respond-async")
        assert made.status_code == 202, made.text
        canceled = made.json()["data"]["id"]
        client.post(f"/jobs/{canceled}/cancel", headers={"Authorization": f"Bearer {live}"})
        # An account without credits: billing refuses the job (402).
        account = client.post(
            "/admin/accounts",
            headers=admin,
            json={"email": f"broke-{uuid.uuid4().hex[:8]}@example.com", "password": "pw-123456789"},
        ).json()["data"]
        broke = client.post(
            f"/admin/accounts/{account['id']}/keys", headers=admin, json={"name": "broke"}
        ).json()["data"]["secret"]
        refused = submit(broke, speech)
        assert refused.status_code in (402, 202), refused.text
        assert client.get("/jobs/job_does_not_exist", headers={"Authorization": f"Bearer {live}"})
        for key, job_id, expected in jobs:
            assert wait_job(client, key, job_id) == expected, job_id
        assert wait_job(client, live, canceled) in ("canceled", "completed")
    # An event nobody can decode: each consumer of the topic dead-letters it.
    asyncio.run(produce_garbage(stack.kafka_bootstrap, "job.submitted"))
    deadline = time.monotonic() + 60
    while (ok.hits < 1 or failing.hits < 2) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ok.hits >= 1 and failing.hits >= 2, (ok.hits, failing.hits)


async def produce_garbage(bootstrap: str, topic: str) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"\x00not an envelope\xff", key=b"acct_garbage")
    finally:
        await producer.stop()


def dashboard_queries() -> list[tuple[str, str, str]]:
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                found.append((path.stem, panel["title"], target["expr"]))
    assert found
    return found


def alert_expressions() -> list[tuple[str, str]]:
    rule = yaml.safe_load(ALERTS.read_text())
    return [(r["alert"], r["expr"]) for g in rule["spec"]["groups"] for r in g["rules"]]


def declared_in_code(metric: str) -> bool:
    sources = [*REPO.glob("libs/*/kiln_*/**/*.py"), *REPO.glob("services/*/kiln_*/**/*.py")]
    return any(f'"{metric}"' in path.read_text() for path in sources)


def test_every_dashboard_query_returns_data(observed: tuple[Any, Any]) -> None:
    _stack, prometheus = observed
    queries = dashboard_queries()
    for metric, reason in NOT_LOCAL.items():
        assert not declared_in_code(metric), f"{metric} is exported now: drop it from NOT_LOCAL"
        assert reason
    missing: list[str] = []
    deadline = time.monotonic() + 180
    while True:
        missing = []
        for dashboard, title, expr in queries:
            answer = prometheus.query(expr)
            assert answer["status"] == "success", f"{dashboard} / {title}: {answer}"
            names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
            if not answer["data"]["result"] and not names & set(NOT_LOCAL):
                missing.append(f"{dashboard} / {title}: {expr}")
        if not missing or time.monotonic() >= deadline:
            break
        time.sleep(3)
    assert not missing, "queries without data:\n" + "\n".join(missing)


def test_every_alert_expression_evaluates(observed: tuple[Any, Any]) -> None:
    _stack, prometheus = observed
    for name, expr in alert_expressions():
        answer = prometheus.query(expr)
        assert answer["status"] == "success", f"{name}: {answer}"
    rules = httpx.get(f"{prometheus.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
    loaded = {r["name"] for g in rules for r in g["rules"]}
    assert loaded == {name for name, _ in alert_expressions()}


def test_every_component_is_scraped(observed: tuple[Any, Any]) -> None:
    _stack, prometheus = observed
    wanted = {**dict.fromkeys(SERVICES, "1"), "modelhost": "1"}
    # One scrape may miss its timeout on a loaded machine (up = 0 until the next): a component
    # that answers is seen up within a few scrapes; one that does not, never.
    deadline = time.monotonic() + 120
    while True:
        answer = prometheus.query("up")
        jobs = {r["metric"]["job"]: r["value"][1] for r in answer["data"]["result"]}
        if jobs == wanted or time.monotonic() >= deadline:
            break
        time.sleep(2)
    assert jobs == wanted


def test_the_probe_paths_of_the_manifests_answer(observed: tuple[Any, Any]) -> None:
    stack, _prometheus = observed
    manifests = render("dev")
    for workload in workloads(manifests):
        name = workload["metadata"]["name"]
        container = workload["spec"]["template"]["spec"]["containers"][0]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            get = container.get(probe, {}).get("httpGet")
            if get is None:
                continue
            port = stack.triton_url if name == "modelhost" else stack.service_url(name)
            response = httpx.get(f"{port}{get['path']}", timeout=10)
            assert response.status_code == 200, f"{name} {probe} {get['path']}"
    named(manifests, "Deployment", "modelhost")
