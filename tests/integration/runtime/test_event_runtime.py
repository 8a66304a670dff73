"""The event runtime on a real broker and a real SQLite database: batches in one transaction,
duplicates dropped, order kept, transient failures held and retried, poison dead-lettered and
replayed, the outbox published once by several instances on one database."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from sqlalchemy import event, func, select
from sqlalchemy.exc import OperationalError

from kiln_contracts import Event, decode
from kiln_runtime.batches import EventHandlers
from kiln_runtime.dead_letters import list_dead_letters, replay_dead_letters
from kiln_runtime.failures import TransientError
from kiln_runtime.metrics import BATCH_RETRIES, BATCH_SIZE
from kiln_runtime.service import ServiceRuntime
from kiln_runtime.unit import OutgoingEvent, write_outbox
from tests.integration.runtime.conftest import (
    MESSAGING,
    Toy,
    grant,
    handled_counts,
    metadata,
    send_all,
    settings_for,
    toy_runtime,
    wait_until,
)

pytestmark = pytest.mark.integration


def _acct(tag: str) -> str:
    return f"acct_{tag}_{uuid.uuid4().hex[:8]}"


async def applied_events(
    bootstrap: str, accounts: set[str], expected: int, timeout_s: float = 20.0
) -> list[str]:
    """The grant ids of every `credits.applied` for `accounts` on the topic (duplicates kept).

    Reads until at least `expected` are found and the topic's end, read again after that, is
    reached: events are published after their batch commits, so the last ones may still be on
    their way when the caller sees its handlers done, and a duplicate would come after them."""
    consumer = AIOKafkaConsumer(
        "credits.applied",
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    try:
        await consumer.seek_to_beginning()
        out: list[str] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            ends = await consumer.end_offsets(list(consumer.assignment()))
            caught_up = all([await consumer.position(tp) >= end for tp, end in ends.items()])
            if caught_up and len(out) >= expected:
                return out
            for messages in (await consumer.getmany(timeout_ms=200)).values():
                for m in messages:
                    event = decode(m.value)
                    if event.account_id in accounts:
                        out.append(event.message.grant_id)  # type: ignore[attr-defined]
        return out
    finally:
        await consumer.stop()


async def test_a_batch_is_handled_once_in_order_and_its_events_published_once(
    kafka: str, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    group = f"toy-{uuid.uuid4().hex[:6]}"
    accounts = [_acct("batch") for _ in range(4)]
    toy = Toy()
    runtime = toy_runtime(settings_for(kafka, tmp_path / "toy.db", group), toy)
    before = BATCH_SIZE.labels(group)._sum.get()
    items = [(a, grant(a, f"{a}:{i}")) for i in range(50) for a in accounts]
    await send_all(producer, items)  # waiting before the consumer starts: batches form
    await runtime.start()
    try:
        await wait_until(
            lambda: sum(1 for g in toy.seen if g.split(":")[0] in accounts) >= len(items)
        )
        counts = await runtime.read(handled_counts)
        assert {a: counts[a] for a in accounts} == dict.fromkeys(accounts, 50)
        for account in accounts:
            mine = [int(g.split(":")[1]) for g in toy.seen if g.startswith(account + ":")]
            assert mine == list(range(50)), "order within the partition is kept"
        handled = BATCH_SIZE.labels(group)._sum.get() - before
        assert handled >= len(items)
        published = await applied_events(kafka, set(accounts), expected=len(items))
        expected = sorted(f"{a}:{i}" for i in range(50) for a in accounts)
        assert sorted(published) == expected, "each event published once"
    finally:
        await runtime.stop()


async def test_what_arrives_during_a_batch_is_the_next_batch_not_its_first_event_alone(
    kafka: str, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    """Nothing is fetched while a batch is handled: the next fetch goes when it is done, and
    brings everything that arrived meanwhile. Before, aiokafka fetched again as soon as the
    batch was taken and the broker answered with the first event to arrive (B), so B was a
    batch of its own and C, D and E waited for the one after."""
    group = f"toy-{uuid.uuid4().hex[:6]}"
    account = _acct("fetch")
    entered = threading.Event()
    release = threading.Event()
    seen_before: dict[str, int] = {}  # grant id -> events committed when it was handled
    toy = Toy()

    def hold_the_first(event: Event) -> BaseException | None:
        grant_id = event.message.grant_id  # type: ignore[attr-defined]
        seen_before[grant_id] = len(toy.seen)
        if grant_id == f"{account}:A":
            entered.set()
            release.wait(30)  # on the writer thread: the batch in hand stays open
        return None

    def mine() -> list[str]:
        return [g.split(":")[1] for g in toy.seen if g.startswith(account + ":")]

    toy.fail = hold_the_first
    runtime = toy_runtime(settings_for(kafka, tmp_path / "toy.db", group), toy)
    await runtime.start()
    try:
        # A new group reads the topic from its start: first through what other tests left.
        await send_all(producer, [(account, grant(account, f"{account}:S"))])
        await wait_until(lambda: mine() == ["S"])
        settled = -1
        while settled != len(toy.seen):
            settled = len(toy.seen)
            await asyncio.sleep(1.0)
        await send_all(producer, [(account, grant(account, f"{account}:A"))])
        await asyncio.wait_for(asyncio.to_thread(entered.wait, 30), 35)
        await send_all(producer, [(account, grant(account, f"{account}:B"))])
        await asyncio.sleep(0.5)  # time enough for a fetch in flight to come back with B
        await send_all(producer, [(account, grant(account, f"{account}:{g}")) for g in "CDE"])
        release.set()
        await wait_until(lambda: len(mine()) == 6)
        assert mine() == list("SABCDE")
        after_a = {seen_before[f"{account}:{g}"] for g in "BCDE"}
        assert len(after_a) == 1, f"B, C, D and E in one batch (events before each: {after_a})"
    finally:
        release.set()
        await runtime.stop()


async def test_a_second_copy_of_an_event_at_a_new_offset_is_dropped(
    kafka: str, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    group = f"toy-{uuid.uuid4().hex[:6]}"
    account = _acct("dup")
    event_id = str(uuid.uuid4())
    toy = Toy()
    runtime = toy_runtime(settings_for(kafka, tmp_path / "toy.db", group), toy)
    await runtime.start()
    try:
        await send_all(producer, [(account, grant(account, "g1", event_id))])
        await wait_until(lambda: "g1" in toy.seen)
        await send_all(
            producer, [(account, grant(account, "g1", event_id)), (account, grant(account, "g2"))]
        )
        await wait_until(lambda: "g2" in toy.seen)
        assert toy.seen.count("g1") == 1
        assert (await runtime.read(handled_counts))[account] == 2
    finally:
        await runtime.stop()


async def test_a_transient_failure_holds_the_partition_until_it_passes(
    kafka: str, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    group = f"toy-{uuid.uuid4().hex[:6]}"
    account = _acct("transient")
    failures = {"left": 4}

    def fail(event: object) -> BaseException | None:
        if getattr(event, "account_id", "") == account and failures["left"] > 0:
            failures["left"] -= 1
            return TransientError("database away")
        return None

    toy = Toy(fail=fail)  # type: ignore[arg-type]
    runtime = toy_runtime(settings_for(kafka, tmp_path / "toy.db", group), toy)
    await runtime.start()
    try:
        await send_all(producer, [(account, grant(account, f"t{i}")) for i in range(5)])
        await wait_until(lambda: sum(1 for g in toy.seen if g.startswith("t")) == 5)
        assert [g for g in toy.seen if g.startswith("t")] == [f"t{i}" for i in range(5)]
        assert failures["left"] == 0
        assert (await runtime.read(handled_counts))[account] == 5
        assert await list_dead_letters(kafka, group=group) == []
    finally:
        await runtime.stop()


async def test_poison_goes_to_the_dead_letter_topic_and_can_be_replayed(
    kafka: str, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    group = f"toy-{uuid.uuid4().hex[:6]}"
    account = _acct("poison")
    broken = {"on": True}

    def fail(event: object) -> BaseException | None:
        message = getattr(event, "message", None)
        if broken["on"] and getattr(message, "grant_id", "") == "bad":
            return ValueError("cannot handle this grant")
        return None

    toy = Toy(fail=fail)  # type: ignore[arg-type]
    runtime = toy_runtime(settings_for(kafka, tmp_path / "toy.db", group), toy)
    await runtime.start()
    try:
        await send_all(
            producer,
            [
                (account, grant(account, "before")),
                (account, grant(account, "bad")),
                (account, b"\x00not an envelope"),
                (account, grant(account, "after")),
            ],
        )
        await wait_until(lambda: "after" in toy.seen)
        assert [g for g in toy.seen if g in ("before", "bad", "after")] == ["before", "after"]
        letters: list = []

        async def listed() -> list:
            return await list_dead_letters(kafka, group=group)

        deadline = asyncio.get_running_loop().time() + 30
        while len(letters) < 2 and asyncio.get_running_loop().time() < deadline:
            letters = await listed()
            await asyncio.sleep(0.2)
        assert len(letters) == 2
        by_error = sorted(letters, key=lambda e: e.error)
        assert by_error[0].error.startswith("EventDecodeError")
        assert by_error[1].error == "ValueError: cannot handle this grant"
        assert all(e.topic == "credits.granted" and e.group == group for e in letters)
        assert by_error[1].event_type == "credits.granted" and by_error[1].event_id
        assert by_error[1].offset >= 0 and by_error[1].key == account
        # The operator fixes the cause and replays the event that failed.
        broken["on"] = False
        replayed = await replay_dead_letters(kafka, refs=[by_error[1].ref])
        assert [e.ref for e in replayed] == [by_error[1].ref]
        await wait_until(lambda: "bad" in toy.seen)
        await asyncio.sleep(1.0)
        assert toy.seen.count("bad") == 1
        assert (await runtime.read(handled_counts))[account] == 3
    finally:
        await runtime.stop()


async def test_a_batch_fenced_on_one_partition_loses_nothing_of_the_others(
    kafka: str, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    """Another member moved partition 0's position while this member's batch held events of
    partitions 0 and 1: the batch rolls back, partition 0 goes on from the other member's
    position, and partition 1's events are handled all the same (not dropped with the batch
    and then skipped by the next one)."""
    db = tmp_path / "toy.db"
    group = f"toy-{uuid.uuid4().hex[:6]}"
    theirs, ours = _acct("moved"), _acct("kept")
    toy = Toy()
    runtime = toy_runtime(settings_for(kafka, db, group), toy)

    tag = uuid.uuid4().hex[:6]  # other tests' grants are on these partitions too

    async def send(account: str, partition: int, grant_id: str) -> int:
        sent = await producer.send_and_wait(
            "credits.granted",
            value=grant(account, f"{tag}:{grant_id}"),
            key=account.encode(),
            partition=partition,
        )
        return int(sent.offset)

    await runtime.start()
    try:
        await send(theirs, 0, "warm0")
        await send(ours, 1, "warm1")
        await wait_until(lambda: {f"{tag}:warm0", f"{tag}:warm1"} <= set(toy.seen))
        # Hold SQLite's write lock: the member's next batch (one event) waits for it, and
        # the events sent meanwhile pile up to come as one batch of both partitions. Before
        # letting go, "another member" handles partition 0's and moves its position.
        lock = sqlite3.connect(db, isolation_level=None, timeout=30)
        try:
            lock.execute("BEGIN IMMEDIATE")
            await send(ours, 1, "blocked")
            await asyncio.sleep(1.0)  # fetched: the member waits for the lock
            last = 0
            for i in range(3):
                last = await send(theirs, 0, f"moved{i}")
                await send(ours, 1, f"kept{i}")
            await asyncio.sleep(1.0)
            lock.execute(
                "UPDATE consumer_positions SET next_offset = ? "
                "WHERE consumer = ? AND topic = 'credits.granted' AND partition = 0",
                (last + 1, group),
            )
            lock.execute("COMMIT")
        finally:
            lock.close()
        await send(ours, 1, "after")
        await wait_until(lambda: f"{tag}:after" in toy.seen, timeout_s=30)
        mine = [g.removeprefix(f"{tag}:") for g in toy.seen if g.startswith(f"{tag}:")]
        assert [g for g in mine if not g.startswith(("warm0", "moved"))] == [
            "warm1", "blocked", "kept0", "kept1", "kept2", "after"
        ]  # fmt: skip
        assert [g for g in mine if g.startswith(("warm0", "moved"))] == ["warm0"]
        assert BATCH_RETRIES.labels(group, "fenced")._value.get() >= 1
        assert (await runtime.read(handled_counts))[ours] == 6
    finally:
        await runtime.stop()


async def test_a_batch_that_fails_outside_its_transaction_is_fetched_again(
    kafka: str, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    """Something failed between fetching a batch and finishing it, outside the transaction's
    own retries (say, the database away while re-reading positions after a fence): the
    consumer goes back to where each partition stands, so the batch comes again and nothing
    after it moves past it."""
    group = f"toy-{uuid.uuid4().hex[:6]}"
    account = _acct("refetch")
    tag = uuid.uuid4().hex[:6]
    toy = Toy()
    runtime = toy_runtime(settings_for(kafka, tmp_path / "toy.db", group), toy)
    await runtime.start()
    consumer = runtime.consumer
    assert consumer is not None
    handle = consumer._handle
    failures = {"left": 1}

    async def failing_once(deliveries: Any) -> None:
        if failures["left"] and any(tag.encode() in (d.value or b"") for d in deliveries):
            failures["left"] -= 1
            raise RuntimeError("the database went away while positions were re-read")
        await handle(deliveries)

    consumer._handle = failing_once  # type: ignore[method-assign]
    try:
        await send_all(producer, [(account, grant(account, f"{tag}:{i}")) for i in range(3)])
        await send_all(producer, [(account, grant(account, f"{tag}:after"))])
        await wait_until(lambda: f"{tag}:after" in toy.seen, timeout_s=30)
        assert failures["left"] == 0
        assert [g for g in toy.seen if g.startswith(tag)] == [
            f"{tag}:0", f"{tag}:1", f"{tag}:2", f"{tag}:after"
        ]  # fmt: skip
        assert (await runtime.read(handled_counts))[account] == 4
    finally:
        await runtime.stop()


async def test_a_rebalance_while_a_transient_failure_is_waited_out_loses_nothing(
    kafka: str, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    """The database is away for a few seconds (every batch fails transiently) while a second
    member joins and the partitions are dealt out again: once it is back, every event was
    handled once, by one member or the other."""
    db = tmp_path / "shared.db"
    group = f"toy-{uuid.uuid4().hex[:6]}"
    accounts = [_acct("hold") for _ in range(6)]
    away = {"until": 0.0}

    def fail(_event: object) -> BaseException | None:
        if time.monotonic() < away["until"]:  # handlers run on the writer thread
            return TransientError("database away")
        return None

    toys = [Toy(fail=fail), Toy(fail=fail)]  # type: ignore[arg-type]
    first = toy_runtime(settings_for(kafka, db, group), toys[0])
    second = toy_runtime(settings_for(kafka, db, group), toys[1])
    await first.start()
    try:
        await send_all(producer, [(a, grant(a, f"{a}:warm")) for a in accounts])
        await wait_until(lambda: sum(1 for g in toys[0].seen if g.endswith(":warm")) == 6)
        away["until"] = time.monotonic() + 6.0
        await send_all(producer, [(a, grant(a, f"{a}:{i}")) for i in range(10) for a in accounts])
        await second.start()  # joins while the first member waits out the failures
        await send_all(
            producer, [(a, grant(a, f"{a}:{i}")) for i in range(10, 20) for a in accounts]
        )
        await wait_until(
            lambda: sum(1 for t in toys for g in t.seen if g.split(":")[0] in accounts) == 126,
            timeout_s=60,
        )
        await asyncio.sleep(1.0)  # nothing more (no second handling) arrives
        handled = [g for t in toys for g in t.seen if g.split(":")[0] in accounts]
        assert sorted(handled) == sorted(
            [f"{a}:warm" for a in accounts] + [f"{a}:{i}" for i in range(20) for a in accounts]
        )
        counts = await first.read(handled_counts)
        assert {a: counts[a] for a in accounts} == dict.fromkeys(accounts, 21)
    finally:
        await second.stop()
        await first.stop()


async def test_a_partition_back_at_a_member_with_its_own_database_skips_what_others_handled(
    kafka: str, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    """Inference's workers each keep their own database. A partition that another worker
    handled meanwhile comes back with this database's old position; the member goes on from
    the group's committed offset instead of running everything the other handled again."""
    group = f"toy-{uuid.uuid4().hex[:6]}"
    accounts = [_acct("own") for _ in range(6)]

    def member(db: str, toy: Toy) -> ServiceRuntime:
        return toy_runtime(settings_for(kafka, tmp_path / db, group, database_shared=False), toy)

    def mine(toy: Toy) -> list[str]:
        return [g for g in toy.seen if g.split(":")[0] in accounts]

    before = Toy()
    first = member("first.db", before)
    await first.start()
    try:
        await send_all(producer, [(a, grant(a, f"{a}:warm")) for a in accounts])
        await wait_until(lambda: len(mine(before)) == 6)
    finally:
        await first.stop()

    other = Toy()
    second = member("second.db", other)
    await second.start()
    try:
        await send_all(producer, [(a, grant(a, f"{a}:{i}")) for i in range(10) for a in accounts])
        await wait_until(lambda: len(mine(other)) == 60)
    finally:
        await second.stop()

    after = Toy()
    back = member("first.db", after)
    await back.start()
    try:
        await send_all(producer, [(a, grant(a, f"{a}:back")) for a in accounts])
        await wait_until(lambda: sum(1 for g in mine(after) if g.endswith(":back")) == 6)
        await asyncio.sleep(1.0)  # nothing else arrives late
        assert sorted(mine(after)) == sorted(f"{a}:back" for a in accounts)
        counts = await back.read(handled_counts)
        assert {a: counts[a] for a in accounts} == dict.fromkeys(accounts, 2)
    finally:
        await back.stop()


async def test_a_batch_whose_commit_fails_tells_its_handlers(
    kafka: str, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    """The batch's handlers all ran, then its COMMIT failed (transiently): the handlers hear
    of the rollback (what they keep in memory must not stay ahead of the rows), and the batch
    is handled again, once."""
    group = f"toy-{uuid.uuid4().hex[:6]}"
    account = _acct("commit")
    toy = Toy()
    rollbacks: list[int] = []
    handlers = toy.handlers()
    handlers = EventHandlers(handlers.handlers, on_rollback=lambda: rollbacks.append(1))
    runtime = ServiceRuntime(
        settings_for(kafka, tmp_path / "toy.db", group), metadata, MESSAGING, handlers=handlers
    )
    await runtime.start()
    failures = {"left": 1}

    def note_batch(connection: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO INBOX"):
            connection.info["toy_batch"] = True  # a consumer batch (not the relay, a hook)

    def failing_commit(connection: Any) -> None:
        if connection.info.pop("toy_batch", False) and failures["left"]:
            failures["left"] -= 1
            raise OperationalError("COMMIT", {}, sqlite3.OperationalError("database is locked"))

    event.listen(runtime.db.engine, "before_cursor_execute", note_batch)
    event.listen(runtime.db.engine, "commit", failing_commit)
    try:
        await send_all(producer, [(account, grant(account, f"{account}:0"))])
        await wait_until(lambda: f"{account}:0" in toy.seen, timeout_s=30)
        assert failures["left"] == 0
        assert rollbacks, "the handlers were told of the failed commit"
        assert (await runtime.read(handled_counts))[account] == 1
        assert toy.seen.count(f"{account}:0") == 1
    finally:
        event.remove(runtime.db.engine, "commit", failing_commit)
        event.remove(runtime.db.engine, "before_cursor_execute", note_batch)
        await runtime.stop()


async def test_rows_left_by_a_dead_writer_are_sent_once_by_one_of_several_instances(
    kafka: str, tmp_path: Path
) -> None:
    db = tmp_path / "shared.db"
    account = _acct("orphan")
    runtimes = [
        toy_runtime(settings_for(kafka, db, f"toy-{uuid.uuid4().hex[:6]}"), Toy()) for _ in range(3)
    ]
    for r in runtimes:
        await r.start()
    try:
        now = runtimes[0].clock()
        rows = [
            OutgoingEvent(
                topic="credits.applied",
                key=account,
                event_id=str(uuid.uuid4()),
                value=decode_grant_applied(account, f"o{i}"),
            )
            for i in range(40)
        ]
        # As a writer that died right after its commit would have left them.
        await runtimes[0].db.write(
            lambda c: write_outbox(
                c,
                MESSAGING,
                rows,
                owner="dead-instance",
                now=now - timedelta(seconds=60),
                lease=timedelta(seconds=1),
            )
        )
        outbox = MESSAGING.outbox

        async def left() -> int:
            # Only these rows: the three groups also work through every earlier test's grants
            # on the topic, and their own outbox rows come and go meanwhile.
            return int(
                await runtimes[0].read(
                    lambda c: c.execute(
                        select(func.count()).select_from(outbox).where(outbox.c.key == account)
                    ).scalar()
                )
                or 0
            )

        async with asyncio.timeout(30):
            while await left():  # noqa: ASYNC110 - a table, not an event, says when
                await asyncio.sleep(0.2)
        published = await applied_events(kafka, {account}, expected=40)
        assert sorted(published) == sorted(f"o{i}" for i in range(40))
    finally:
        for r in runtimes:
            await r.stop()


async def test_a_row_written_for_a_retired_topic_goes_to_its_successor(
    kafka: str, tmp_path: Path
) -> None:
    """An earlier release wrote a job's ends to a topic per type; a row it left in the outbox
    (and the broker no longer has that topic) goes to `job.ended`, where consumers read it."""
    from kiln_contracts import encode, new_event
    from kiln_contracts.v1 import jobs_pb2
    from tests.kafka_topics import read_events

    account = _acct("retired")
    failed = new_event(
        "job.failed",
        jobs_pb2.JobFailed(error_code="TIMEOUT", attempt=1),
        account_id=account,
        job_id=f"job_{uuid.uuid4().hex}",
    )
    runtime = toy_runtime(settings_for(kafka, tmp_path / "r.db", "toy-retired"), Toy())
    await runtime.start()
    try:
        now = runtime.clock()
        row = OutgoingEvent(
            topic="job.failed", key=account, event_id=failed.event_id, value=encode(failed)
        )
        await runtime.db.write(
            lambda c: write_outbox(
                c,
                MESSAGING,
                [row],
                owner="earlier-release",
                now=now - timedelta(seconds=60),
                lease=timedelta(seconds=1),
            )
        )
        async with asyncio.timeout(30):
            while await runtime.read(  # noqa: ASYNC110 - a table, not an event, says when
                lambda c: c.execute(select(func.count()).select_from(MESSAGING.outbox)).scalar()
            ):
                await asyncio.sleep(0.2)
    finally:
        await runtime.stop()
    ended = await asyncio.to_thread(read_events, kafka, ["job.ended"])
    assert [e.event_id for e in ended if e.account_id == account] == [failed.event_id]


def decode_grant_applied(account: str, grant_id: str) -> bytes:
    from kiln_contracts import encode, new_event
    from kiln_contracts.v1 import credits_pb2

    return encode(
        new_event(
            "credits.applied",
            credits_pb2.CreditsApplied(grant_id=grant_id, amount_millicredits=1),
            account_id=account,
        )
    )


async def test_the_inbox_is_pruned_after_its_retention(
    kafka: str, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    """Inbox rows older than `inbox_retention_s` go; younger ones stay (the runtime's clock is
    the test's)."""
    from datetime import UTC, datetime

    from kiln_runtime.service import ServiceRuntime
    from tests.integration.runtime.conftest import metadata

    group = f"toy-{uuid.uuid4().hex[:6]}"
    account = _acct("prune")
    now = {"t": datetime(2026, 12, 5, 12, 0, tzinfo=UTC)}
    toy = Toy()
    runtime = ServiceRuntime(
        settings_for(kafka, tmp_path / "toy.db", group, inbox_retention_s=3600.0),
        metadata,
        MESSAGING,
        handlers=toy.handlers(),
        clock=lambda: now["t"],
    )
    await runtime.start()
    try:
        await send_all(producer, [(account, grant(account, f"p{i}")) for i in range(5)])
        await wait_until(lambda: sum(1 for g in toy.seen if g.startswith("p")) == 5)
        inbox = MESSAGING.inbox

        async def rows() -> int:
            return int(
                await runtime.read(
                    lambda c: c.execute(
                        select(func.count()).select_from(inbox).where(inbox.c.consumer == group)
                    ).scalar()
                )
                or 0
            )

        handled = await rows()
        assert handled >= 5
        now["t"] = now["t"] + timedelta(minutes=59)
        assert await runtime.prune_inbox() == 0
        now["t"] = now["t"] + timedelta(minutes=2)
        assert await runtime.prune_inbox() == handled
        assert await rows() == 0
    finally:
        await runtime.stop()


async def test_a_partition_is_silent_only_while_the_broker_answers_no_fetch_of_it(
    kafka: str, tmp_path: Path
) -> None:
    """`silent_partitions` (the scheduler's guard against taking a broker outage for silent
    workers): a held idle partition is answered every poll, so none is silent, right after a
    rebalance too (aiokafka's fetch stamps start afresh then); a limit shorter than one poll
    finds them silent, so the stamps are what is read."""
    db = tmp_path / "silence.db"
    group = f"toy-{uuid.uuid4().hex[:6]}"
    first = toy_runtime(settings_for(kafka, db, group), Toy())
    second = toy_runtime(settings_for(kafka, db, group), Toy())
    await first.start()
    try:
        consumer = first.consumer
        assert consumer is not None
        await asyncio.wait_for(consumer.assigned.wait(), 60)
        assert consumer.partitions
        for _ in range(10):
            assert consumer.silent_partitions(3.0) == frozenset()
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.1)
        assert consumer.silent_partitions(0.0) == consumer.partitions
        held = len(consumer.partitions)
        await second.start()  # a rebalance: every partition revoked, some assigned back
        other = second.consumer
        assert other is not None
        await wait_until(
            lambda: (
                consumer.assigned.is_set()
                and other.assigned.is_set()
                and bool(other.partitions)
                and len(consumer.partitions) + len(other.partitions) == held
            )
        )
        assert consumer.silent_partitions(3.0) == frozenset()
        assert other.silent_partitions(3.0) == frozenset()
    finally:
        await second.stop()
        await first.stop()
