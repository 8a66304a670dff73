"""Webhooks on the whole stack, over the public API, with the compressed retry schedule of the
shared stack (conftest.STACK_ENV: retries after 1 s and 2 s):

- a receiver that fails twice then succeeds gets exactly one successful delivery, on the third
  attempt, with one `webhook-id`; both signatures verify (`v1` with the `standardwebhooks`
  library, `v1a` with `cryptography` against GET /webhooks/public-key);
- a receiver that is down for the whole schedule: `failed`, every attempt in the log;
- the notifier killed (SIGKILL) while a receiver holds a delivery open: after a restart the
  delivery is made, with the same `webhook-id` (at least once);
- an account endpoint with an event filter, a test event, and a redelivery.
"""

from __future__ import annotations

import base64
import json
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from standardwebhooks import Webhook

from tests.stack_support import LocalStack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@dataclass
class Hit:
    at: float
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int | None = None

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class ScriptedReceiver:
    """Answers POST /<name> with the next step of the script registered for <name> (the last
    step repeats): a status, or ("hang", seconds) to hold the request open, then answer 204
    (recorded as answered -1: its sender may be gone by then, so it never counts as a 2xx)."""

    base: str = ""
    scripts: dict[str, list[Any]] = field(default_factory=dict)
    hits: list[Hit] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, script: list[Any]) -> str:
        name = uuid.uuid4().hex
        with self.lock:
            self.scripts[name] = script
        return f"{self.base}/{name}"

    def got(self, url: str) -> list[Hit]:
        path = "/" + url.rsplit("/", 1)[1]
        with self.lock:
            return [h for h in self.hits if h.path == path]


@pytest.fixture(scope="module")
def scripted() -> Iterator[ScriptedReceiver]:
    receiver = ScriptedReceiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            hit = Hit(
                time.monotonic(), self.path, {k.lower(): v for k, v in self.headers.items()}, body
            )
            with receiver.lock:
                receiver.hits.append(hit)
                script = receiver.scripts.get(self.path.lstrip("/"), [204])
                index = len([h for h in receiver.hits if h.path == self.path]) - 1
            step = script[min(index, len(script) - 1)]
            status = 204
            if isinstance(step, tuple):
                time.sleep(step[1])
                hit.answered = -1  # held open: its sender may be gone; never counts as a 2xx
            else:
                status = step
                hit.answered = status
            try:
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()
            except OSError:
                pass  # the sender is gone (killed mid-delivery)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver.base = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield receiver
    server.shutdown()


def client(env: dict[str, str], key: str) -> httpx.Client:
    return httpx.Client(
        base_url=env["KILN_API_URL"], headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


def until(check: Callable[[], Any], timeout_s: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def sandbox_job(api: httpx.Client, webhook_url: str | None = None, **extra: Any) -> str:
    body: dict[str, Any] = {"model": "kiln/prompt-to-image", "input": {"prompt": "a kiln"}}
    if webhook_url:
        body["webhook_url"] = webhook_url
    body.update(extra)
    created = api.post("/jobs", json=body)
    assert created.status_code == 202, created.text
    job_id: str = created.json()["data"]["id"]
    return job_id


def delivery_log(api: httpx.Client, **params: str) -> list[dict[str, Any]]:
    response = api.get("/webhooks/deliveries", params=params)
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def verify_v1a(public_key: str, hit: Hit) -> None:
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key))
    signed = f"{hit.headers['webhook-id']}.{hit.headers['webhook-timestamp']}.".encode() + hit.body
    [v1a] = [p for p in hit.headers["webhook-signature"].split(" ") if p.startswith("v1a,")]
    key.verify(base64.b64decode(v1a.split(",", 1)[1]), signed)  # raises if it does not verify


def test_fails_twice_then_one_success_on_the_third_attempt(
    stack: dict[str, str], scripted: ScriptedReceiver
) -> None:
    url = scripted.url([500, 502, 204, 204])
    with client(stack, stack["KILN_DEMO_SANDBOX_KEY"]) as api:
        job_id = sandbox_job(api, url)
        hits = until(lambda: [h for h in scripted.got(url) if h.answered == 204], what="a 2xx")
        time.sleep(3)  # nothing more may come: the 204 ended it
        got = scripted.got(url)
        assert [h.answered for h in got] == [500, 502, 204]
        assert len(hits) == 1
        assert len({h.headers["webhook-id"] for h in got}) == 1
        assert 0.9 <= got[1].at - got[0].at and 1.9 <= got[2].at - got[1].at  # the schedule

        secret = api.get("/webhooks/default-secret").json()["data"]["secret"]
        public_key = api.get("/webhooks/public-key").json()["data"]["public_key"]
        for hit in got:
            payload = Webhook(secret).verify(hit.body, hit.headers)  # v1, the PyPI library
            assert payload["data"]["id"] == job_id
            verify_v1a(public_key, hit)  # v1a, with cryptography (the library checks v1 only)

        [delivery] = until(
            lambda: [d for d in delivery_log(api, job_id=job_id) if d["status"] == "delivered"],
            what="the delivery log",
        )
        assert [(a["attempt"], a["status_code"], a["outcome"]) for a in delivery["attempts"]] == [
            (1, 500, "retrying"),
            (2, 502, "retrying"),
            (3, 204, "delivered"),
        ]
        assert all(a["latency_ms"] >= 0 and a["attempted_at"] for a in delivery["attempts"])
        assert delivery["webhook_id"] == got[0].headers["webhook-id"]


def test_receiver_down_for_the_whole_schedule_ends_failed_with_every_attempt_logged(
    stack: dict[str, str], scripted: ScriptedReceiver
) -> None:
    url = scripted.url([503])
    with client(stack, stack["KILN_DEMO_SANDBOX_KEY"]) as api:
        job_id = sandbox_job(api, url)
        [delivery] = until(
            lambda: [d for d in delivery_log(api, job_id=job_id) if d["status"] == "failed"],
            what="webhook.failed in the log",
        )
        assert [(a["status_code"], a["outcome"]) for a in delivery["attempts"]] == [
            (503, "retrying"),
            (503, "retrying"),
            (503, "failed"),
        ]
        assert all(a["error"] == "HTTP 503" for a in delivery["attempts"])
        assert len(scripted.got(url)) == 3


def test_killing_the_notifier_mid_delivery_loses_nothing(
    stack: dict[str, str], local_stack: LocalStack, scripted: ScriptedReceiver
) -> None:
    url = scripted.url([("hang", 3.0), 204])
    with client(stack, stack["KILN_DEMO_SANDBOX_KEY"]) as api:
        job_id = sandbox_job(api, url)
        until(lambda: scripted.got(url), what="the first attempt to arrive")
        assert local_stack.stop_service("notifier", signal.SIGKILL)
        killed_at = time.monotonic()
        local_stack.start_service("notifier")
        local_stack.wait_ready(["notifier"])
        until(
            lambda: [h for h in scripted.got(url) if h.answered == 204],
            timeout_s=90,
            what="the delivery after the restart",
        )
        got = scripted.got(url)
        assert len(got) >= 2 and got[0].answered == -1
        assert got[-1].at > killed_at  # sent by the restarted notifier
        assert len({h.headers["webhook-id"] for h in got}) == 1  # the same message, again
        [delivery] = until(
            lambda: [d for d in delivery_log(api, job_id=job_id) if d["status"] == "delivered"],
            what="the delivery log",
        )
        assert delivery["webhook_id"] == got[0].headers["webhook-id"]
        print(f"redelivered {got[-1].at - killed_at:.1f} s after the kill")


def test_account_endpoint_filter_test_event_and_redelivery(
    stack: dict[str, str], scripted: ScriptedReceiver
) -> None:
    with client(stack, stack["KILN_ADMIN_TOKEN"]) as operator:
        account = operator.post(
            "/admin/accounts",
            json={"email": f"hooks-{time.time_ns()}@example.com", "password": "correct horse"},
        ).json()["data"]
        key = operator.post(
            f"/admin/accounts/{account['id']}/keys", json={"name": "hooks", "sandbox": True}
        ).json()["data"]["secret"]
    url = scripted.url([204])
    with client(stack, key) as api:
        created = api.post("/webhooks", json={"url": url, "event_types": ["job.failed"]})
        assert created.status_code == 201, created.text
        endpoint = created.json()["data"]
        secret = endpoint["secret"]

        test = api.post(f"/webhooks/{endpoint['id']}/test")
        assert test.status_code == 202
        [hit] = until(lambda: scripted.got(url), what="the test event")
        payload = Webhook(secret).verify(hit.body, hit.headers)
        assert payload["type"] == "webhook.test"
        assert hit.headers["webhook-id"] == test.json()["data"]["test_id"]

        completed = sandbox_job(api)  # job.completed: filtered out
        failed = sandbox_job(api, sandbox={"outcome": "failed"})
        until(lambda: len(scripted.got(url)) >= 2, what="the job.failed delivery")
        time.sleep(1)
        bodies = [Webhook(secret).verify(h.body, h.headers) for h in scripted.got(url)]
        assert [(b["type"], b["data"].get("id")) for b in bodies[1:]] == [("job.failed", failed)]
        assert completed not in {b["data"].get("id") for b in bodies}

        [delivery] = until(
            lambda: delivery_log(api, job_id=failed, endpoint_id=endpoint["id"]),
            what="the endpoint's delivery in the log",
        )
        again = api.post(f"/webhooks/deliveries/{delivery['id']}/redeliver")
        assert again.status_code == 202, again.text
        until(lambda: len(scripted.got(url)) >= 3, what="the redelivery")
        first, repeat = scripted.got(url)[1:3]
        assert repeat.headers["webhook-id"] == first.headers["webhook-id"]
        assert repeat.body == first.body
        Webhook(secret).verify(repeat.body, repeat.headers)
        until(
            lambda: len(delivery_log(api, job_id=failed)[0]["attempts"]) == 2,
            what="the redelivery's attempt in the log",
        )

        assert api.delete(f"/webhooks/{endpoint['id']}").status_code == 200
        assert api.get("/webhooks").json()["data"] == []
