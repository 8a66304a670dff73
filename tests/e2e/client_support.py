"""Helpers of the client's e2e tests: a fresh account of their own, and the `kiln` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from tests.e2e.conftest import Received, WebhookReceiver


@dataclass(frozen=True)
class Account:
    id: str
    email: str
    password: str
    live_key: str
    sandbox_key: str


def new_account(env: dict[str, str], credits: str = "100") -> Account:
    """An account of this test alone (so that counts and feeds start empty)."""
    admin = httpx.Client(
        base_url=env["KILN_API_URL"],
        headers={"Authorization": f"Bearer {env['KILN_ADMIN_TOKEN']}"},
        timeout=30,
    )
    email, password = f"client-{uuid.uuid4().hex[:10]}@example.com", "a long passphrase 123"
    made = admin.post("/admin/accounts", json={"email": email, "password": password})
    assert made.status_code == 201, made.text
    account_id = made.json()["data"]["id"]
    if credits != "0":
        granted = admin.post(
            f"/admin/accounts/{account_id}/credits", json={"amount": credits, "reason": "tests"}
        )
        assert granted.status_code == 200, granted.text
    keys = {}
    for sandbox in (False, True):
        key = admin.post(
            f"/admin/accounts/{account_id}/keys", json={"name": "tests", "sandbox": sandbox}
        )
        assert key.status_code == 201, key.text
        keys[sandbox] = key.json()["data"]["secret"]
    if credits != "0":
        # Billing books the grant, then the gateway hears of it: a live job sent before billing
        # booked it would be refused, and a balance read before the gateway heard of it is 0.
        wait_for_balance(env, keys[False], credits)
    return Account(account_id, email, password, keys[False], keys[True])


def wait_for_balance(env: dict[str, str], key: str, credits: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    balance: str | None = None
    with httpx.Client(
        base_url=env["KILN_API_URL"], headers={"Authorization": f"Bearer {key}"}, timeout=30
    ) as api:
        while time.monotonic() < deadline:
            answer = api.get("/usage")
            if answer.status_code == 200:
                balance = answer.json()["data"]["balance"]
                if Decimal(balance) == Decimal(credits):
                    return
            time.sleep(0.2)
    raise AssertionError(f"the grant of {credits} credits not booked: balance {balance}")


def kiln_cli(
    env: dict[str, str],
    key: str,
    *args: str,
    check: bool = True,
    extra_env: dict[str, str] | None = None,
    timeout: float = 180,
) -> subprocess.CompletedProcess[str]:
    """`kiln ARGS` as a user runs it (output piped, so JSON)."""
    run_env = {
        **os.environ,
        "KILN_API_URL": env["KILN_API_URL"],
        "KILN_API_KEY": key,
        **(extra_env or {}),
    }
    result = subprocess.run(
        [sys.executable, "-m", "kiln_client", *args],
        env=run_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check:
        assert result.returncode == 0, f"kiln {' '.join(args)}: {result.stderr}"
    return result


def parsed(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(result.stdout)


@contextmanager
def webhook_receiver() -> Iterator[WebhookReceiver]:
    """A local HTTP server that records every POST (a receiver of the client's tests alone,
    so that their test events and forwarded events reach no other test's receiver)."""
    receiver = WebhookReceiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
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
    try:
        yield receiver
    finally:
        server.shutdown()
