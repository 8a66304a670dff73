"""Failures in the event runtime, on the whole stack (docs/architecture.md, "Dead letters"):

- a billing failure that heals (billing's database locked past its busy timeout, then
  released): the batch is held and retried, and the job is still reserved and charged exactly
  once;
- poison (bytes that are no Kiln event, on a topic four services consume): each consumer group
  sends it to the dead-letter topic with its error, group and offset, counts it, and goes on;
  `kiln-admin dlq list` shows it and `kiln-admin dlq replay` hands it back to its group only.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from kiln_billing.verify import verify_ledger
from kiln_gateway.cli import main as kiln_admin
from tests.e2e.conftest import wait_until
from tests.stack_support import LocalStack, load_env_file

pytestmark = pytest.mark.e2e

CONSUMERS_OF_ENDS = ("billing", "scheduler", "notifier", "gateway")


def metric(stack: LocalStack, process: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{stack.service_url(process)}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def hold_write_lock(
    path: str, until: Any, taken: threading.Event, at_most_s: float = 120.0
) -> None:
    """Take SQLite's write lock on `path` (as another writer would) until `until()` is true.

    Until an outcome, not for a fixed time: billing's batch waits its busy timeout (30 s) for
    the lock behind whatever write its single writer thread is doing first (an outbox round
    that also waits 30 s), so a lock held for a fixed 36 s was sometimes gone by the time the
    batch asked for it."""
    connection = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        taken.set()
        deadline = time.monotonic() + at_most_s
        while not until() and time.monotonic() < deadline:
            time.sleep(0.5)
        connection.execute("ROLLBACK")
    finally:
        connection.close()


def test_a_billing_failure_that_heals_still_charges_the_job_once(
    local_stack: LocalStack,
) -> None:
    env = load_env_file(local_stack.root / "demo.env")
    api = env["KILN_API_URL"]
    headers = {"Authorization": f"Bearer {env['KILN_DEMO_LIVE_KEY']}"}
    before_retries = metric(
        local_stack, "billing", "kiln_batch_retries_total", service="billing", reason="transient"
    )
    usage_before = httpx.get(f"{api}/usage", headers=headers, timeout=10).json()["data"]

    def retried() -> bool:
        return (
            metric(
                local_stack,
                "billing",
                "kiln_batch_retries_total",
                service="billing",
                reason="transient",
            )
            > before_retries
        )

    # Until billing's batch has failed "database is locked" (past its 30 s busy timeout) once.
    taken = threading.Event()
    locker = threading.Thread(
        target=hold_write_lock,
        args=(str(local_stack.data_dir / "billing.db"), retried, taken),
        daemon=True,
    )
    locker.start()
    assert taken.wait(10)
    submitted = httpx.post(
        f"{api}/jobs",
        headers={**headers, "Prefer": "respond-async"},
        json={"model": "kiln/prompt-to-image", "input": {"prompt": "a lighthouse", "seed": 3}},
        timeout=30,
    )
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["data"]["id"]
    assert submitted.json()["data"]["status"] == "pending"
    locker.join(150)

    def done() -> dict[str, Any] | None:
        job = httpx.get(f"{api}/jobs/{job_id}", headers=headers, timeout=10).json()["data"]
        return job if job["status"] in ("completed", "failed", "canceled") else None

    job = wait_until("the job ends", done, timeout_s=180)
    assert job["status"] == "completed", job
    assert job["cost"] == "5"
    assert retried(), "billing held its batch and retried it"

    def charged() -> dict[str, Any] | None:
        usage = httpx.get(f"{api}/usage", headers=headers, timeout=10).json()["data"]
        return usage if usage["reserved"] == usage_before["reserved"] else None

    usage = wait_until("the reservation is settled", charged, timeout_s=60)
    assert float(usage["balance"]) == pytest.approx(float(usage_before["balance"]) - 5)
    report = verify_ledger(f"sqlite:///{local_stack.data_dir}/billing.db")
    assert report.ok, report.render()


def test_poison_goes_to_the_dead_letter_topic_and_replays_to_its_group(
    local_stack: LocalStack, capsys: pytest.CaptureFixture[str]
) -> None:
    bootstrap = local_stack.kafka_bootstrap
    before = {
        s: metric(local_stack, s, "kiln_events_dead_lettered_total", topic="job.ended")
        for s in CONSUMERS_OF_ENDS
    }

    async def send_poison() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(
                "job.ended", value=b"\x08\x96\x01 not an envelope", key=b"acct_poison"
            )
        finally:
            await producer.stop()

    asyncio.run(send_poison())
    for service in CONSUMERS_OF_ENDS:
        wait_until(
            f"{service} counts its dead letter",
            lambda s=service: (
                metric(local_stack, s, "kiln_events_dead_lettered_total", topic="job.ended")
                > before[s]
            ),
        )

    def listed() -> list[dict[str, Any]]:
        capsys.readouterr()
        assert kiln_admin(["dlq", "--bootstrap", bootstrap, "list", "--json"]) == 0
        entries = json.loads(capsys.readouterr().out)
        return [e for e in entries if e["key"] == "acct_poison"]

    entries = wait_until(
        "kiln-admin lists one dead letter per group",
        lambda: (found := listed()) and len(found) >= 4 and found,
    )
    assert {e["group"] for e in entries} == set(CONSUMERS_OF_ENDS)
    for entry in entries:
        assert entry["topic"] == "job.ended"
        assert entry["error"].startswith("EventDecodeError")
        assert entry["offset"] >= 0 and entry["partition"] >= 0
    # Replayed for billing alone: billing dead-letters it again (it is still poison); the
    # other groups skip it as meant for another group.
    skipped_before = metric(
        local_stack,
        "scheduler",
        "kiln_events_consumed_total",
        outcome="replay_for_other_group",
    )
    billing_entry = next(e for e in entries if e["group"] == "billing")
    capsys.readouterr()
    assert kiln_admin(["dlq", "--bootstrap", bootstrap, "replay", billing_entry["ref"]]) == 0
    replayed = json.loads(capsys.readouterr().out)["replayed"]
    assert [r["ref"] for r in replayed] == [billing_entry["ref"]]
    wait_until(
        "billing dead-letters the replay; the scheduler skips it",
        lambda: (
            metric(local_stack, "billing", "kiln_events_dead_lettered_total", topic="job.ended")
            >= before["billing"] + 2
            and metric(
                local_stack,
                "scheduler",
                "kiln_events_consumed_total",
                outcome="replay_for_other_group",
            )
            > skipped_before
        ),
    )
