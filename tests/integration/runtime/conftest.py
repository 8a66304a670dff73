"""A toy service for the event runtime's tests, on the real Kafka broker of
tests/integration/conftest.py."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import Column, Connection, Engine, Integer, MetaData, String, Table, select

from kiln_contracts import Event, encode, new_event
from kiln_contracts.v1 import credits_pb2, jobs_pb2
from kiln_runtime.batches import EventHandlers
from kiln_runtime.db import make_sync_engine
from kiln_runtime.messaging import add_messaging_tables
from kiln_runtime.service import ServiceRuntime
from kiln_runtime.settings import ServiceSettings
from kiln_runtime.unit import Unit
from tests.integration.billing.postgres_cluster import PostgresCluster

BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(params=BACKENDS)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A fresh database of each backend with the toy's tables (messaging included)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/toy.db"
    else:
        cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
        name = f"toy_{uuid.uuid4().hex[:12]}"
        cluster.server.create_databases([name])
        url = cluster.url(name)
    made = make_sync_engine(url)
    metadata.create_all(made)
    try:
        yield made
    finally:
        made.dispose()


# The toy service: it counts the `credits.granted` events it handled per account (its state),
# and answers each with a `credits.applied` (its emitted events).
metadata = MetaData()
counts = Table(
    "counts",
    metadata,
    Column("account_id", String(64), primary_key=True),
    Column("handled", Integer, nullable=False),
)
MESSAGING = add_messaging_tables(metadata)


@dataclass
class Toy:
    """A handler whose behaviour a test steers: `fail(event) -> exception or None`."""

    fail: Callable[[Event], BaseException | None] = lambda _e: None
    seen: list[str] = field(default_factory=list)  # grant ids, in the order handled

    def handle_credits_granted(self, unit: Unit, event: Event) -> None:
        problem = self.fail(event)
        if problem is not None:
            raise problem
        grant = event.message
        assert isinstance(grant, credits_pb2.CreditsGranted)
        row = unit.connection.execute(
            select(counts.c.handled).where(counts.c.account_id == event.account_id)
        ).scalar()
        if row is None:
            unit.connection.execute(counts.insert().values(account_id=event.account_id, handled=1))
        else:
            unit.connection.execute(
                counts.update()
                .where(counts.c.account_id == event.account_id)
                .values(handled=row + 1)
            )
        unit.emit(
            "credits.applied",
            credits_pb2.CreditsApplied(grant_id=grant.grant_id, amount_millicredits=1),
            account_id=event.account_id,
        )
        unit.after_commit(lambda: self.seen.append(grant.grant_id))

    def handlers(self) -> EventHandlers:
        return EventHandlers({"credits.granted": self.handle_credits_granted})


def settings_for(bootstrap: str, db: Path, group: str, **extra: object) -> ServiceSettings:
    return ServiceSettings(
        service_name=group,
        instance_id=f"{group}-{uuid.uuid4().hex[:6]}",
        kafka_bootstrap=bootstrap,
        database_url=f"sqlite:///{db}",
        data_dir=db.parent,
        kafka_session_timeout_s=6.0,
        kafka_heartbeat_interval_s=1.0,
        outbox_lease_s=3.0,
        outbox_recover_interval_s=0.5,
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture
async def producer(kafka: str) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=kafka, acks="all", enable_idempotence=True)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


def grant(account: str, grant_id: str, event_id: str | None = None) -> bytes:
    return encode(
        new_event(
            "credits.granted",
            credits_pb2.CreditsGranted(grant_id=grant_id, amount_millicredits=1000, reason="t"),
            account_id=account,
            event_id=event_id,
        )
    )


async def send_all(producer: AIOKafkaProducer, items: list[tuple[str, bytes]]) -> None:
    futures = [
        await producer.send("credits.granted", value=value, key=key.encode())
        for key, value in items
    ]
    await asyncio.gather(*futures)


def handled_counts(connection: Connection) -> dict[str, int]:
    return {r.account_id: r.handled for r in connection.execute(select(counts)).all()}


async def wait_until(check: Callable[[], object], timeout_s: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.1)


def toy_runtime(settings: ServiceSettings, toy: Toy) -> ServiceRuntime:
    return ServiceRuntime(settings, metadata, MESSAGING, handlers=toy.handlers())


_ = jobs_pb2
