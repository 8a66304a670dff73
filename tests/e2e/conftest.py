"""The whole local stack (real Kafka, real Triton, the five services as processes) in a
temporary folder with its own ports, started once for the e2e tests."""

import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.stack_support import LocalStack, RunningStack, StackPorts, load_env_file, started_stack
from tests.triton_support import free_ports, start, stop

E2E = Path(__file__).parent


def wait_until(what: str, check: Any, timeout_s: float = 120.0, every_s: float = 1.0) -> Any:
    """`check()`'s first true value, asked every `every_s`; fails after `timeout_s` with the
    last value it gave."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every_s)
    raise AssertionError(f"{what}: not within {timeout_s:.0f} s (last: {last!r})")


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
    # A job.progress every 0.5 s of a running job (2 s by default): a video job that renders in
    # a second or two still shows progress on its stream (test_inference_models).
    "KILN_PROGRESS_INTERVAL_S": "0.5",
    "KILN_RETRY_SCHEDULE_S": "[1, 2]",
    "KILN_DELIVERY_TIMEOUT_S": "4",
    "KILN_DELIVERY_LEASE_S": "6",
    # Billing's decision (a job's 402 or reservation, a grant's booking) comes back inside the
    # request on a busy 2-core machine too: with the default 2 s, a late one made a 402 test
    # get 202 `pending`, or a live job of a fresh account find its grant not yet booked.
    "KILN_DECISION_WAIT_S": "8",
}


@dataclass(frozen=True)
class OperatorTriton:
    """An operator's own Triton server (tests/e2e/operator_triton.py), known to the stack only
    through the catalog file that every service reads (KILN_CATALOG_FILE)."""

    url: str
    catalog_file: Path
    log: Path


@pytest.fixture(scope="session")
def operator_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorTriton]:
    folder: Path = tmp_path_factory.mktemp("operator-triton")
    http_port, grpc_port, metrics_port = free_ports(3)
    template = (E2E / "data" / "operator_catalog.json").read_text()
    catalog_file = folder / "catalog.json"
    catalog_file.write_text(template.replace("{grpc_port}", str(grpc_port)))
    log = folder / "triton.log"
    process = start(
        [
            sys.executable,
            str(E2E / "operator_triton.py"),
            "--grpc-port",
            str(grpc_port),
            "--http-port",
            str(http_port),
            "--metrics-port",
            str(metrics_port),
        ],
        log,
    )
    try:
        # readiness is waited for by the tests that use it, while the stack starts
        yield OperatorTriton(url=f"127.0.0.1:{grpc_port}", catalog_file=catalog_file, log=log)
    finally:
        stop(process)


@pytest.fixture(scope="session")
def local_stack(
    tmp_path_factory: pytest.TempPathFactory, operator_triton: OperatorTriton
) -> Iterator[LocalStack]:
    """The shared stack itself, for tests that stop and start its services. Its catalog is
    Kiln's plus an operator's model on a second Triton server (operator_triton)."""
    root: Path = tmp_path_factory.mktemp("kiln-stack")
    env = {**STACK_ENV, "KILN_CATALOG_FILE": str(operator_triton.catalog_file)}
    local = LocalStack(root=root, ports=StackPorts.free(), sandbox_delay_ms=300, extra_env=env)
    try:
        local.up()
        yield local
    finally:
        local.down(discard=not os.environ.get("KILN_KEEP_STACK"))


# What billing's crash test (test_billing_crash.py) asks of a stack: the gateway waits for
# billing's answer long enough that 50 decisions at once come back inside the request on a busy
# 2-core machine, no rate limit is in the way, and the ledger gauges are refreshed every second.
BILLING_STACK_ENV = {
    "KILN_DECISION_WAIT_S": "8",
    "KILN_RATE_LIMIT_LIVE_CREATE": "100000",
    "KILN_RATE_LIMIT_SANDBOX_CREATE": "100000",
    "KILN_RATE_LIMIT_LIVE_READ": "100000",
    "KILN_RATE_LIMIT_SANDBOX_READ": "100000",
    "KILN_LEDGER_GAUGES_INTERVAL_S": "1",
}


def throwaway_stack(
    prefix: str, *, extra_env: dict[str, str], database: str = "sqlite"
) -> Iterator[RunningStack]:
    """A whole stack of its own, removed afterwards (`KILN_KEEP_STACK=1` keeps its folder)."""
    # A folder of its own rather than pytest's tmp_path: another pytest session on the same
    # machine prunes old pytest folders, which would pull this one from under the stack.
    root = Path(tempfile.mkdtemp(prefix=prefix))
    started = time.monotonic()
    try:
        with started_stack(
            root, sandbox_delay_ms=200, extra_env=extra_env, database=database
        ) as running:
            print(f"stack on {database} up in {time.monotonic() - started:.1f} s (in {root})")
            yield running
    finally:
        if os.environ.get("KILN_KEEP_STACK"):
            print(f"kept {root} (KILN_KEEP_STACK)")
        else:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_stack() -> Iterator[RunningStack]:
    """A whole stack whose services run on PostgreSQL (each handed a `postgresql://` URL of a
    cluster of the stack's own), shared by billing's crash test and the happy path: a stack
    costs about a minute to start on a busy 2-core machine."""
    yield from throwaway_stack(
        "kiln-pg-stack-", extra_env={**STACK_ENV, **BILLING_STACK_ENV}, database="postgresql"
    )


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
