"""The outbox publisher replaces an idempotent producer that cannot go on (OutOfOrderSequenceNumber
after a broker restart, an unknown producer id, ...) instead of failing every send forever; the
rows it could not send are published by the new producer, once, and then deleted. A stand-in
producer (no broker: this is the publisher's own logic) on a real SQLite database."""

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

from aiokafka import AIOKafkaProducer
from aiokafka.errors import OutOfOrderSequenceNumber
from sqlalchemy import MetaData, func, select

from kiln_contracts import encode, new_event
from kiln_contracts.v1 import credits_pb2
from kiln_runtime.db import Database
from kiln_runtime.messaging import add_messaging_tables, utcnow
from kiln_runtime.outbox import OutboxPublisher
from kiln_runtime.unit import OutgoingEvent, write_outbox


class FakeProducer:
    """Stands in for aiokafka's producer: it either fails every send as a producer whose
    sequence numbers the broker no longer accepts, or records what it sends."""

    def __init__(self, broken: bool) -> None:
        self.broken = broken
        self.sent: list[tuple[str, bytes]] = []
        self.stopped = False

    async def send(
        self, topic: str, value: bytes, key: bytes, headers: Any = None
    ) -> "asyncio.Future[None]":
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.broken:
            future.set_exception(OutOfOrderSequenceNumber())
        else:
            self.sent.append((topic, key))
            future.set_result(None)
        return future

    async def stop(self) -> None:
        self.stopped = True


def _rows(n: int) -> list[OutgoingEvent]:
    out = []
    for i in range(n):
        envelope = new_event(
            "credits.applied", credits_pb2.CreditsApplied(grant_id=f"g{i}"), account_id="a"
        )
        out.append(OutgoingEvent("credits.applied", "a", envelope.event_id, encode(envelope)))
    return out


async def test_a_producer_that_cannot_go_on_is_replaced(tmp_path: Path) -> None:
    metadata = MetaData()
    tables = add_messaging_tables(metadata)
    db = Database(f"sqlite:///{tmp_path}/outbox.db", service="test")
    await db.on_writer(lambda: metadata.create_all(db.engine))
    rows = _rows(3)
    await db.write(
        lambda c: write_outbox(
            c, tables, rows, owner="me", now=utcnow(), lease=timedelta(seconds=60)
        )
    )
    broken, fresh = FakeProducer(broken=True), FakeProducer(broken=False)
    made: list[FakeProducer] = []

    async def new_producer() -> AIOKafkaProducer:
        made.append(fresh)
        return cast(AIOKafkaProducer, fresh)

    publisher = OutboxPublisher(
        db,
        tables,
        cast(AIOKafkaProducer, broken),
        service="test",
        owner="me",
        lease=timedelta(seconds=60),
        recover_interval_s=0.05,
        producer_factory=new_producer,
    )
    sender = asyncio.create_task(publisher.run_sender())
    recovery = asyncio.create_task(publisher.run())
    try:
        publisher.publish(rows)  # publish on commit: every send fails, the producer is dead

        async def left() -> int:
            outbox = tables.outbox
            return int(
                await db.read(
                    lambda c: c.execute(select(func.count()).select_from(outbox)).scalar()
                )
                or 0
            )

        async with asyncio.timeout(10):
            while await left() or not fresh.sent:  # noqa: ASYNC110 - a table says when
                await asyncio.sleep(0.05)
    finally:
        sender.cancel()
        recovery.cancel()
        await asyncio.gather(sender, recovery, return_exceptions=True)
        await db.dispose()
    assert made == [fresh] and broken.stopped
    assert sorted(key for _topic, key in fresh.sent) == [b"a", b"a", b"a"]
    assert len(fresh.sent) == 3, "each row sent once by the new producer"
