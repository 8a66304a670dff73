"""The inference worker's reader of every cancel (kiln_inference.cancel_watch) on a real Kafka
broker: it hands over the cancels of the jobs the worker holds, whatever partition they are
on, skips the others and what cannot be decoded, and tries a failed cancel again while the
job is still held. The end-to-end case (a partition moved to another worker while its
attempt runs) is in tests/integration/test_stack_instances.py."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaProducer

from kiln_contracts import TOPICS, Event, encode, new_event
from kiln_contracts.v1 import jobs_pb2
from kiln_inference.cancel_watch import TOPIC, CancelWatch, cancels_to_handle

pytestmark = pytest.mark.timeout(120)


def cancel(account_id: str, job_id: str) -> Event:
    message = jobs_pb2.JobCancelRequested(requested_by_key_id="key_1")
    return new_event(TOPIC, message, account_id=account_id, job_id=job_id)


async def send(bootstrap: str, items: list[tuple[str, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for key, value in items:
            await producer.send_and_wait(TOPIC, value, key=key.encode())
    finally:
        await producer.stop()


@contextlib.asynccontextmanager
async def watching(watch: CancelWatch) -> AsyncIterator[None]:
    task = asyncio.create_task(watch.run())
    try:
        await asyncio.wait_for(watch.ready.wait(), 60)
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_only_held_jobs_once_each() -> None:
    events = [cancel("acct_a", "job_1"), cancel("acct_a", "job_2"), cancel("acct_b", "job_1")]
    wanted = cancels_to_handle(events, lambda job_id: job_id == "job_1")
    assert [e.job_id for e in wanted] == ["job_1"]


async def test_the_cancels_of_held_jobs_on_every_partition_are_handed_over(kafka: str) -> None:
    held = {f"job_{uuid.uuid4().hex}" for _ in range(12)}
    other = f"job_{uuid.uuid4().hex}"
    got: list[Event] = []
    all_handled = asyncio.Event()

    async def handle(event: Event) -> None:
        got.append(event)
        held.discard(event.job_id)
        if not held:
            all_handled.set()

    watch = CancelWatch(kafka, lambda job_id: job_id in held, handle, poll_timeout_ms=100)
    async with watching(watch):
        jobs = sorted(held)
        # Twelve accounts: the cancels land on several partitions of the topic.
        items = [(f"acct_{n}", encode(cancel(f"acct_{n}", job))) for n, job in enumerate(jobs)]
        items.insert(3, ("acct_x", encode(cancel("acct_x", other))))
        items.insert(5, ("acct_y", b"not an event"))
        await send(kafka, items)
        await asyncio.wait_for(all_handled.wait(), 30)
    assert sorted(e.job_id for e in got) == jobs  # each once; not the unheld job
    assert TOPICS[TOPIC].partitions > 1


async def test_a_failed_cancel_is_tried_again_while_the_job_is_held(kafka: str) -> None:
    job = f"job_{uuid.uuid4().hex}"
    held = {job}
    tries: list[str] = []
    handled = asyncio.Event()

    async def handle(event: Event) -> None:
        tries.append(event.job_id)
        if len(tries) < 3:
            raise RuntimeError("database is locked")
        held.discard(event.job_id)
        handled.set()

    watch = CancelWatch(
        kafka, lambda job_id: job_id in held, handle, poll_timeout_ms=100, retry_s=0.05
    )
    async with watching(watch):
        await send(kafka, [("acct_retry", encode(cancel("acct_retry", job)))])
        await asyncio.wait_for(handled.wait(), 30)
    assert tries == [job, job, job]


async def test_a_cancel_sent_while_the_reader_was_down_is_read_back_to_the_oldest_held_job(
    kafka: str,
) -> None:
    """A worker back from a restart still holds attempts whose partition moved meanwhile: the
    reader starts at the creation of the oldest job it holds, not at the end."""
    job = f"job_{uuid.uuid4().hex}"
    created = datetime.now(UTC) - timedelta(seconds=5)
    await send(kafka, [("acct_back", encode(cancel("acct_back", job)))])
    handled = asyncio.Event()

    async def handle(event: Event) -> None:
        assert event.job_id == job
        handled.set()

    watch = CancelWatch(
        kafka, lambda job_id: job_id == job, handle, held_since=lambda: created, poll_timeout_ms=100
    )
    async with watching(watch):
        await asyncio.wait_for(handled.wait(), 30)
    # Holding nothing, a reader starts at the end: the old cancel is not read again.
    again: list[Event] = []

    async def record(event: Event) -> None:
        again.append(event)

    fresh = CancelWatch(kafka, lambda job_id: job_id == job, record, poll_timeout_ms=100)
    async with watching(fresh):
        await asyncio.sleep(1.0)
    assert again == []


async def test_a_cancel_that_keeps_failing_holds_up_no_other(kafka: str) -> None:
    stuck, other = f"job_{uuid.uuid4().hex}", f"job_{uuid.uuid4().hex}"
    held = {stuck, other}
    handled = asyncio.Event()

    async def handle(event: Event) -> None:
        if event.job_id == stuck:
            raise RuntimeError("the database is away for this one")
        held.discard(event.job_id)
        handled.set()

    watch = CancelWatch(
        kafka, lambda job_id: job_id in held, handle, poll_timeout_ms=100, retry_s=0.05
    )
    async with watching(watch):
        # One account, so one partition: the stuck cancel comes first.
        await send(
            kafka,
            [
                ("acct_stuck", encode(cancel("acct_stuck", stuck))),
                ("acct_stuck", encode(cancel("acct_stuck", other))),
            ],
        )
        await asyncio.wait_for(handled.wait(), 30)
    assert held == {stuck}
