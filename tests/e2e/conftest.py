"""The whole local stack (real Kafka, real Triton, the five services as processes) in a
temporary folder with its own ports, started once for the e2e tests."""

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.stack_support import LocalStack, StackPorts, load_env_file


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    url: str
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def for_job(self, job_id: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.json()["data"]["id"] == job_id]


# Settings every service of the shared stack gets. The webhook retry schedule is compressed
# (1 s, 2 s: three attempts within about 3 s instead of 2 days) so that the webhook outage and
# crash tests are bounded; receivers of the other tests answer 2xx at once and never see it.
# The lease outlasts one attempt (the timeout) and is short, so that a delivery claimed by a
# notifier killed mid-send is due again a few seconds after it restarts.
STACK_ENV = {
    "KILN_RETRY_SCHEDULE_S": "[1, 2]",
    "KILN_DELIVERY_TIMEOUT_S": "4",
    "KILN_DELIVERY_LEASE_S": "6",
}


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The shared stack itself, for tests that stop and start its services."""
    root: Path = tmp_path_factory.mktemp("kiln-stack")
    local = LocalStack(
        root=root, ports=StackPorts.free(), sandbox_delay_ms=300, extra_env=STACK_ENV
    )
    try:
        local.up()
        yield local
    finally:
        local.down()


@pytest.fixture(scope="session")
def stack(local_stack: LocalStack) -> dict[str, str]:
    return load_env_file(local_stack.root / "demo.env")


@pytest.fixture(scope="session")
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            with receiver.lock:
                receiver.received.append(
                    Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                )
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/kiln"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield receiver
    server.shutdown()
