"""The `kiln` command against the whole local stack: every command, run as a user runs it (a
process of its own; output piped, so JSON, except where a terminal is given it)."""

from __future__ import annotations

import io
import json
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.e2e.client_support import Account, kiln_cli, new_account, parsed
from tests.e2e.client_support import webhook_receiver as own_receiver
from tests.e2e.conftest import WebhookReceiver

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

IMAGE = "kiln/prompt-to-image"


@pytest.fixture(scope="module")
def webhook_receiver() -> Iterator[WebhookReceiver]:
    with own_receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def account(stack: dict[str, str]) -> Account:
    return new_account(stack)


def kiln(stack: dict[str, str], account: Account, *args: str, **kw: Any) -> Any:
    return kiln_cli(stack, account.sandbox_key, *args, **kw)


def wait_until(check: Any, what: str, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_run_writes_the_decrypted_result(
    stack: dict[str, str], account: Account, tmp_path: Path
) -> None:
    out = tmp_path / "kite.png"
    result = kiln(
        stack,
        account,
        "run",
        IMAGE,
        "-i",
        "prompt=a kite over the sea",
        "-i",
        "seed:=3",
        "-m",
        "order=7",
        "-o",
        str(out),
    )
    job = parsed(result)
    assert job["status"] == "completed" and job["input"] == {
        "prompt": "a kite over the sea",
        "seed": 3,
    }
    assert job["metadata"] == {"order": "7"}
    Image.open(io.BytesIO(out.read_bytes())).verify()
    assert "saved image/png" in result.stderr and "completed" in result.stderr  # progress lines


def test_run_failures_exit_1_with_the_reason(stack: dict[str, str], account: Account) -> None:
    failed = kiln(
        stack, account, "run", IMAGE, "-i", "prompt=p", "--sandbox-outcome", "failed", check=False
    )
    assert failed.returncode == 1 and "failed" in failed.stderr
    assert parsed(failed)["status"] == "failed"  # the job, for scripts
    invalid = kiln(stack, account, "run", "kiln/nope", "-i", "prompt=p", check=False)
    assert invalid.returncode == 1
    assert "VALIDATION_ERROR" in invalid.stderr and "req_" in invalid.stderr
    bad_input = kiln(stack, account, "run", IMAGE, "-i", "seed:=seven", check=False)
    assert bad_input.returncode == 1 and "not JSON" in bad_input.stderr
    timeout = kiln(
        stack,
        account,
        "run",
        IMAGE,
        "-i",
        "prompt=slow",
        "--sandbox-delay",
        "120",
        "--wait-timeout",
        "2",
        "--cancel-on-timeout",
        check=False,
    )
    assert timeout.returncode == 1 and "after waiting" in timeout.stderr
    assert parsed(timeout)["status"] in ("canceling", "canceled")


def test_jobs_commands(stack: dict[str, str], account: Account, tmp_path: Path) -> None:
    submitted = parsed(kiln(stack, account, "run", IMAGE, "-i", "prompt=later", "--no-wait"))
    assert submitted["status"] in ("pending", "queued")
    job_id = submitted["id"]
    watched = kiln(stack, account, "jobs", "watch", job_id, "-o", str(tmp_path / "w.png"))
    assert parsed(watched)["status"] == "completed"
    assert (tmp_path / "w.png").stat().st_size > 0
    assert parsed(kiln(stack, account, "jobs", "get", job_id))["id"] == job_id
    listed = parsed(kiln(stack, account, "jobs", "list", "--limit", "0"))
    count = parsed(kiln(stack, account, "jobs", "count"))["count"]
    assert len(listed) == count and job_id in {j["id"] for j in listed}
    two = parsed(kiln(stack, account, "jobs", "list", "--limit", "2", "--status", "completed"))
    assert len(two) == 2 and all(j["status"] == "completed" for j in two)

    slow = parsed(
        kiln(stack, account, "run", IMAGE, "-i", "prompt=x", "--sandbox-delay", "120", "--no-wait")
    )
    canceled = parsed(kiln(stack, account, "jobs", "cancel", slow["id"]))
    assert canceled["status"] in ("canceling", "canceled")
    again = kiln(stack, account, "jobs", "cancel", job_id, check=False)
    assert again.returncode == 1 and "CONFLICT" in again.stderr


def test_download_and_decrypt(stack: dict[str, str], account: Account, tmp_path: Path) -> None:
    job = parsed(kiln(stack, account, "run", IMAGE, "-i", "prompt=blob"))
    plain, blob = tmp_path / "plain.png", tmp_path / "blob.bin"
    kiln(stack, account, "download", job["id"], "-o", str(plain))
    kiln(stack, account, "download", job["id"], "-o", str(blob), "--encrypted")
    assert blob.stat().st_size == job["result"]["size_bytes"]
    (tmp_path / "job.json").write_text(json.dumps({"data": job}))
    out = tmp_path / "decrypted.png"
    kiln(stack, account, "decrypt", str(blob), "--job", str(tmp_path / "job.json"), "-o", str(out))
    assert out.read_bytes() == plain.read_bytes()
    by_id = tmp_path / "by-id.png"
    kiln(stack, account, "decrypt", str(blob), "--job", job["id"], "-o", str(by_id))
    assert by_id.read_bytes() == plain.read_bytes()
    wrong = kiln(
        stack,
        account,
        "decrypt",
        str(blob),
        "--job",
        job["id"],
        "-o",
        str(tmp_path / "x.png"),
        "--secret",
        "sk_test_wrong",
        check=False,
    )
    assert wrong.returncode == 1 and "file key" in wrong.stderr
    assert not (tmp_path / "x.png").exists()


def test_catalog_quote_usage_events(stack: dict[str, str], account: Account) -> None:
    models = parsed(kiln(stack, account, "models"))
    assert IMAGE in {m["id"] for m in models}
    assert parsed(kiln(stack, account, "models", IMAGE))["kind"] == "image"
    quote = parsed(kiln(stack, account, "quote", IMAGE, "-i", "prompt=p"))
    assert quote["model"] == IMAGE and quote["sandbox"] is True
    assert "balance" in parsed(kiln(stack, account, "usage"))
    stats = parsed(kiln(stack, account, "usage", "--stats", "--group-by", "model"))
    assert stats["group_by"] == "model"
    lines = kiln(stack, account, "events", "--after", "0").stdout.splitlines()
    events = [json.loads(line) for line in lines]
    assert events and events[0]["type"] == "job.created"
    assert [int(e["id"]) for e in events] == sorted(int(e["id"]) for e in events)
    assert kiln(stack, account, "version").stdout.strip()


def test_tables_on_a_terminal(stack: dict[str, str], account: Account) -> None:
    forced = kiln(stack, account, "--table", "models")
    assert "content type" in forced.stdout and IMAGE in forced.stdout
    # A real terminal: no flag, and the same table (not JSON).
    leader, follower = pty.openpty()
    env = {
        **os.environ,
        "KILN_API_URL": stack["KILN_API_URL"],
        "KILN_API_KEY": account.sandbox_key,
        "COLUMNS": "200",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "kiln_client", "models"], stdout=follower, stderr=follower, env=env
    )
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    process.wait(timeout=60)
    os.close(leader)
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert process.returncode == 0
    assert "content type" in screen and not screen.lstrip().startswith("[")


def test_keys_with_login(stack: dict[str, str], account: Account, tmp_path: Path) -> None:
    config = {"KILN_CONFIG_DIR": str(tmp_path / "config")}
    kiln(
        stack,
        account,
        "login",
        "--email",
        account.email,
        "--password",
        account.password,
        extra_env=config,
    )
    session = tmp_path / "config" / "session.json"
    assert session.stat().st_mode & 0o777 == 0o600
    made = parsed(kiln(stack, account, "keys", "create", "cli", "--sandbox", extra_env=config))
    assert made["secret"].startswith("sk_test_")
    listed = parsed(kiln(stack, account, "keys", "list", extra_env=config))
    assert made["id"] in {k["id"] for k in listed}
    rotated = parsed(kiln(stack, account, "keys", "rotate", made["id"], extra_env=config))
    assert rotated["rotated_from"] == made["id"]
    revoked = parsed(kiln(stack, account, "keys", "revoke", rotated["id"], extra_env=config))
    assert revoked["revoked_at"]
    every = parsed(kiln(stack, account, "keys", "list", "--all", extra_env=config))
    assert {made["id"], rotated["id"]} <= {k["id"] for k in every}
    kiln(stack, account, "logout", extra_env=config)
    logged_out = kiln(stack, account, "keys", "list", extra_env=config, check=False)
    assert logged_out.returncode == 1 and "kiln login" in logged_out.stderr


def test_webhooks_commands(
    stack: dict[str, str], account: Account, webhook_receiver: WebhookReceiver, tmp_path: Path
) -> None:
    made = parsed(
        kiln(
            stack,
            account,
            "webhooks",
            "create",
            webhook_receiver.url,
            "-e",
            "job.completed",
            "--description",
            "cli e2e",
        )
    )
    endpoint_id, secret = made["id"], made["secret"]
    assert endpoint_id in {e["id"] for e in parsed(kiln(stack, account, "webhooks", "list"))}
    assert "secret" not in parsed(kiln(stack, account, "webhooks", "get", endpoint_id))
    updated = parsed(
        kiln(stack, account, "webhooks", "update", endpoint_id, "--description", "renamed")
    )
    assert updated["description"] == "renamed"
    test = parsed(kiln(stack, account, "webhooks", "test", endpoint_id))

    def received() -> list[Any]:
        return [
            r for r in webhook_receiver.received if r.headers.get("webhook-id") == test["test_id"]
        ]

    delivery = wait_until(received, "the test event")[0]
    body = tmp_path / "body.json"
    body.write_bytes(delivery.body)
    headers = [
        arg
        for name in ("webhook-id", "webhook-timestamp", "webhook-signature")
        for arg in ("-H", f"{name}: {delivery.headers[name]}")
    ]
    verified = kiln(
        stack,
        account,
        "verify",
        "--body",
        str(body),
        *headers,
        "--secret",
        secret,
        "--fetch-public-key",
    )
    assert parsed(verified)["type"] == "webhook.test" and "valid" in verified.stderr
    public_key = parsed(kiln(stack, account, "webhooks", "public-key"))["public_key"]
    assert kiln(stack, account, "verify", "--body", str(body), *headers, "--public-key", public_key)
    body.write_bytes(delivery.body.replace(b"webhook.test", b"webhook.fake"))
    forged = kiln(
        stack, account, "verify", "--body", str(body), *headers, "--secret", secret, check=False
    )
    assert forged.returncode == 1 and "v1" in forged.stderr

    logged = wait_until(
        lambda: parsed(
            kiln(stack, account, "webhooks", "deliveries", "--endpoint-id", endpoint_id)
        ),
        "the delivery log",
    )
    one = parsed(kiln(stack, account, "webhooks", "delivery", logged[0]["id"]))
    assert one["attempts"]
    again = parsed(kiln(stack, account, "webhooks", "redeliver", logged[0]["id"]))
    assert again["status"] == "requested"
    wait_until(lambda: len(received()) >= 2, "the redelivery")
    assert parsed(kiln(stack, account, "webhooks", "secret"))["secret"].startswith("whsec_")
    kiln(stack, account, "webhooks", "delete", endpoint_id)
    gone = kiln(stack, account, "webhooks", "get", endpoint_id, check=False)
    assert gone.returncode == 1 and "NOT_FOUND" in gone.stderr


def test_listen_forwards_signed_job_events(
    stack: dict[str, str], webhook_receiver: WebhookReceiver
) -> None:
    from standardwebhooks import Webhook

    account = new_account(stack)  # a feed of its own
    env = {**os.environ, "KILN_API_URL": stack["KILN_API_URL"], "KILN_API_KEY": account.sandbox_key}
    listener = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kiln_client",
            "listen",
            "--forward-to",
            webhook_receiver.url,
            "--poll-interval",
            "0.3",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert listener.stdout is not None
        ready = json.loads(listener.stdout.readline())
        assert ready["ready"] is True and ready["secret"].startswith("whsec_")
        job = parsed(kiln_cli(stack, account.sandbox_key, "run", IMAGE, "-i", "prompt=listen"))

        def forwarded() -> list[Any]:
            return [
                r
                for r in webhook_receiver.received
                if r.headers.get("user-agent", "").startswith("kiln-listen/")
                and r.json()["data"].get("id") == job["id"]
            ]

        got = wait_until(
            lambda: any(r.json()["type"] == "job.completed" for r in forwarded()) and forwarded(),
            "the forwarded events",
        )
        webhook = Webhook(ready["secret"])
        events = [webhook.verify(r.body, r.headers) for r in got]
        types = [e["type"] for e in events]
        assert types[0] == "job.created" and "job.completed" in types
        final = next(e for e in events if e["type"] == "job.completed")
        assert final["data"]["status"] == "completed" and final["data"]["result"]["url"]
        assert len({r.headers["webhook-id"] for r in got}) == len(got)
        report = json.loads(listener.stdout.readline())
        assert report["status_code"] == 204
    finally:
        listener.terminate()
        listener.wait(timeout=30)
