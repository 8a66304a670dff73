"""The outbox relay replaces an idempotent producer that cannot go on (OutOfOrderSequenceNumber
after a broker restart, an unknown producer id, ...) instead of failing every round forever;
the rows it could not send are published by the new producer."""

import asyncio
from pathlib import Path
from typing import Any, cast

from aiokafka import AIOKafkaProducer
from aiokafka.errors import OutOfOrderSequenceNumber
from sqlalchemy import MetaData, func, select

from kiln_contracts.v1 import credits_pb2
from kiln_runtime.db import make_engine, make_session_factory, transaction
from kiln_runtime.messaging import add_messaging_tables
from kiln_runtime.outbox import Outbox, OutboxRelay


class FakeProducer:
    """Stands in for aiokafka's producer: it either fails every send as a producer whose
    sequence numbers the broker no longer accepts, or records what it sends."""

    def __init__(self, broken: bool) -> None:
        self.broken = broken
        self.sent: list[tuple[str, bytes]] = []
        self.stopped = False

    async def send(self, topic: str, value: bytes, key: bytes) -> "asyncio.Future[None]":
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.broken:
            future.set_exception(OutOfOrderSequenceNumber())
        else:
            self.sent.append((topic, key))
            future.set_result(None)
        return future

    async def stop(self) -> None:
        self.stopped = True


async def test_a_producer_that_cannot_go_on_is_replaced(tmp_path: Path) -> None:
    metadata = MetaData()
    tables = add_messaging_tables(metadata)
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path}/outbox.db")
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    sessions = make_session_factory(engine)
    async with transaction(sessions) as session:
        outbox = Outbox()
        for n in range(3):
            outbox.emit(
                "credits.applied", credits_pb2.CreditsApplied(grant_id=f"g{n}"), account_id="a"
            )
        await outbox.write(session, tables)

    broken, fresh = FakeProducer(broken=True), FakeProducer(broken=False)
    made: list[FakeProducer] = []

    async def new_producer() -> AIOKafkaProducer:
        made.append(fresh)
        return cast(AIOKafkaProducer, fresh)

    relay = OutboxRelay(
        sessions,
        tables,
        cast(AIOKafkaProducer, broken),
        service="test",
        poll_interval_s=0.05,
        producer_factory=new_producer,
    )
    task = asyncio.create_task(relay.run())
    try:
        for _ in range(100):
            if len(fresh.sent) == 3:
                break
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert broken.stopped and made == [fresh]
    assert cast(Any, relay.producer) is fresh
    assert [topic for topic, _ in fresh.sent] == ["credits.applied"] * 3
    async with sessions() as session:
        left = await session.scalar(
            select(func.count())
            .select_from(tables.outbox)
            .where(tables.outbox.c.published_at.is_(None))
        )
    assert left == 0
    await engine.dispose()
