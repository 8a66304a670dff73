"""No secret in clear at rest or in transit inside Kiln (issue 12, item 9).

On the shared stack, one account goes through everything that handles a secret: the operator
makes it (a password) and its keys (API key secrets), it signs in for a session token and in
the console (a session cookie; the operator too, with the admin token), makes a webhook endpoint
(its `whsec_` secret), reads its default webhook secret, and runs a live and a sandbox job whose
webhooks reach a receiver (so the notifier held both signing secrets and signed with them).

Then every file under the stack's data folder (each service's SQLite database, its WAL and
shared-memory files, the blobs), every file of the Kafka broker's log folder, and every record
of every topic read from the beginning must hold none of those secrets: not the strings, not
the base64 body of a `whsec_` secret, not its raw 32 bytes. The platform's own keys (admin
token, signing keys, the secrets keyring of KILN_SECRETS_KEYS) are looked for as well.

A scan that reads nothing would pass: so it must find what it should find in clear (the
account's email in the gateway's database, a job id on the topics)."""

from __future__ import annotations

import asyncio
import base64
import re
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.e2e.conftest import WebhookReceiver, wait_until
from tests.stack_support import LocalStack, read_env_file

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


@dataclass
class Secrets:
    """What must never be found, by name (for the failure message) and bytes."""

    needles: dict[str, bytes] = field(default_factory=dict)

    def add(self, name: str, value: str | bytes) -> None:
        raw = value.encode() if isinstance(value, str) else value
        assert len(raw) >= 16, f"{name} is too short to look for"
        self.needles[name] = raw

    def add_webhook_secret(self, name: str, secret: str) -> None:
        assert secret.startswith("whsec_"), secret
        body = secret.removeprefix("whsec_")
        self.add(name, secret)
        self.add(f"{name} (base64 body)", body)
        self.add(f"{name} (raw bytes)", base64.b64decode(body))

    def add_api_key(self, name: str, secret: str) -> None:
        self.add(name, secret)
        self.add(f"{name} (after its prefix)", secret.split("_", 2)[2])

    def found_in(self, data: bytes) -> list[str]:
        return [name for name, needle in self.needles.items() if needle in data]


def files_under(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            yield path


def scan_files(roots: Iterable[Path], secrets: Secrets) -> tuple[list[str], bytes]:
    """Where each secret was found (`<name> in <file>`), and every byte read (for the
    scan's own check)."""
    found: list[str] = []
    read: list[bytes] = []
    for root in roots:
        for path in files_under(root):
            try:
                data = path.read_bytes()
            except FileNotFoundError:  # a WAL checkpointed away, a segment deleted meanwhile
                continue
            read.append(data)
            found += [f"{name} in {path}" for name in secrets.found_in(data)]
    return found, b"".join(read)


async def read_every_topic(bootstrap: str) -> dict[str, list[bytes]]:
    """Every record (key, value and headers as bytes) of every topic, from the beginning to
    the end each partition has now."""
    lister = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await lister.start()
    try:
        topics = sorted(await lister.topics())
    finally:
        await lister.stop()
    # No group: the consumer is assigned every partition of the topics it names.
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + 60
        while {tp.topic for tp in consumer.assignment()} != set(topics):
            assert time.monotonic() < deadline, f"not assigned every topic: {consumer.assignment()}"
            await asyncio.sleep(0.2)
        partitions = sorted(consumer.assignment())
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: dict[str, list[bytes]] = {topic: [] for topic in topics}
        waiting = {tp for tp in partitions if ends[tp] > 0}
        deadline = time.monotonic() + 120
        while waiting and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
            for tp, messages in batches.items():
                for message in messages:
                    parts = [message.key or b"", message.value or b""]
                    parts += [value for _, value in message.headers or ()]
                    records[tp.topic].append(b"\x00".join(parts))
            for tp in list(waiting):
                if await consumer.position(tp) >= ends[tp]:
                    waiting.discard(tp)
        assert not waiting, f"could not read these partitions to their end: {sorted(waiting)}"
        return records
    finally:
        await consumer.stop()


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found, page.text[:500]
    return found.group(1)


def console_sign_in(base_url: str, path: str, fields: dict[str, str]) -> str:
    """Sign in through the console's form; the session cookie's value."""
    with httpx.Client(base_url=base_url, timeout=30) as browser:
        form = browser.get(path)
        assert form.status_code == 200, form.text[:500]
        answer = browser.post(path, data={"csrf_token": csrf_of(form), **fields})
        assert answer.status_code == 303, answer.text[:500]
        cookie = browser.cookies.get("kiln_console")
        assert cookie, answer.headers
        landing = browser.get(answer.headers["location"], follow_redirects=True)
        assert landing.status_code == 200 and "login" not in landing.url.path, landing.url
        return cookie


def test_no_secret_is_stored_or_sent_in_clear(
    local_stack: LocalStack, stack: dict[str, str], webhook_receiver: WebhookReceiver
) -> None:
    api_url = stack["KILN_API_URL"]
    gateway_url = api_url.removesuffix("/api/v1")
    secrets = Secrets()
    for name, value in read_env_file(local_stack.secrets_file).items():
        for index, part in enumerate(value.split(",")):
            secrets.add(f"{name}[{index}]", part)
    secrets.add("the demo account's password", stack["KILN_DEMO_PASSWORD"])
    secrets.add_api_key("the demo live key", stack["KILN_DEMO_LIVE_KEY"])
    secrets.add_api_key("the demo sandbox key", stack["KILN_DEMO_SANDBOX_KEY"])

    admin = httpx.Client(
        base_url=api_url, headers={"Authorization": f"Bearer {stack['KILN_ADMIN_TOKEN']}"}
    )
    email = f"secrets-{uuid.uuid4().hex[:10]}@example.com"
    password = f"a passphrase nobody stores {uuid.uuid4().hex}"
    secrets.add("the account's password", password)
    made = admin.post("/admin/accounts", json={"email": email, "password": password})
    assert made.status_code == 201, made.text
    account_id = made.json()["data"]["id"]
    granted = admin.post(
        f"/admin/accounts/{account_id}/credits", json={"amount": "50", "reason": "secrets test"}
    )
    assert granted.status_code == 200, granted.text
    keys: dict[bool, str] = {}
    for sandbox in (False, True):
        key = admin.post(
            f"/admin/accounts/{account_id}/keys", json={"name": "scan", "sandbox": sandbox}
        )
        assert key.status_code == 201, key.text
        keys[sandbox] = key.json()["data"]["secret"]
        secrets.add_api_key(f"the {'sandbox' if sandbox else 'live'} key", keys[sandbox])

    # A session token, and a key made with it.
    login = httpx.post(
        f"{api_url}/auth/token", json={"email": email, "password": password}, timeout=30
    )
    assert login.status_code == 200, login.text
    session_token = login.json()["data"]["token"]
    secrets.add("the session token", session_token)
    by_session = httpx.post(
        f"{api_url}/keys",
        json={"name": "made with a session", "sandbox": True},
        headers={"Authorization": f"Bearer {session_token}"},
        timeout=30,
    )
    assert by_session.status_code == 201, by_session.text
    secrets.add_api_key("the key made with a session", by_session.json()["data"]["secret"])

    live_api = httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {keys[False]}"})
    sandbox_api = httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {keys[True]}"})
    endpoint = live_api.post("/webhooks", json={"url": webhook_receiver.url})
    assert endpoint.status_code == 201, endpoint.text
    endpoint_secret = endpoint.json()["data"]["secret"]
    secrets.add_webhook_secret("the endpoint's secret", endpoint_secret)
    default = live_api.get("/webhooks/default-secret")
    assert default.status_code == 200, default.text
    default_secret = default.json()["data"]["secret"]
    secrets.add_webhook_secret("the default webhook secret", default_secret)
    demo_default = httpx.get(
        f"{api_url}/webhooks/default-secret",
        headers={"Authorization": f"Bearer {stack['KILN_DEMO_LIVE_KEY']}"},
        timeout=30,
    )
    assert demo_default.status_code == 200, demo_default.text
    secrets.add_webhook_secret(
        "the demo account's default webhook secret", demo_default.json()["data"]["secret"]
    )

    # A live and a sandbox job, each with its own webhook_url: each job's end is delivered
    # twice (its webhook_url, signed with the default secret; the endpoint, with its own).
    jobs = []
    for api, model, job_input in (
        (
            live_api,
            "kiln/prompt-to-image",
            {"prompt": "a kiln", "seed": 3, "width": 64, "height": 64},
        ),
        (sandbox_api, "kiln/prompt-to-image", {"prompt": "a kiln", "width": 64, "height": 64}),
    ):
        created = api.post(
            "/jobs", json={"model": model, "input": job_input, "webhook_url": webhook_receiver.url}
        )
        assert created.status_code == 202, created.text
        jobs.append(created.json()["data"]["id"])
    for job_id in jobs:
        deliveries = wait_until(
            f"both webhooks of {job_id}", lambda j=job_id: len(webhook_receiver.for_job(j)) >= 2
        )
        assert deliveries
        verified = set()
        for delivery in webhook_receiver.for_job(job_id):
            for name, secret in (("default", default_secret), ("endpoint", endpoint_secret)):
                try:
                    Webhook(secret).verify(delivery.body, delivery.headers)
                    verified.add(name)
                except WebhookVerificationError:
                    continue
        assert verified == {"default", "endpoint"}, "each secret signed one delivery"

    # The console: an account holder's and the operator's sessions.
    secrets.add(
        "the account's console session",
        console_sign_in(gateway_url, "/console/login", {"email": email, "password": password}),
    )
    secrets.add(
        "the operator's console session",
        console_sign_in(
            gateway_url, "/console/admin/login", {"admin_token": stack["KILN_ADMIN_TOKEN"]}
        ),
    )

    # Everything the stack keeps: the databases (with their WAL files) and blobs, Kafka's log.
    found, read = scan_files([local_stack.data_dir, local_stack.kafka_data], secrets)
    assert email.encode() in read, "the scan did not read the gateway's database"
    records = asyncio.run(read_every_topic(local_stack.kafka_bootstrap))
    assert "webhooks.endpoint_changed" in records and "job.ended" in records
    on_topics = b"\n".join(b"\n".join(values) for values in records.values())
    assert all(job_id.encode() in on_topics for job_id in jobs), "the scan missed the jobs"
    for topic, values in records.items():
        for value in values:
            found += [f"{name} on the topic {topic}" for name in secrets.found_in(value)]
    assert found == [], "secrets in clear:\n" + "\n".join(sorted(set(found)))
