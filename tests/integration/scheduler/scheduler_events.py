"""Driving the scheduler's handlers and timer the way the broker and its task do, and reading
what it emitted (its outbox)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import select

from kiln_contracts import Event, decode, encode, new_event
from kiln_contracts.v1 import common_pb2, credits_pb2, jobs_pb2
from kiln_runtime.catalog import load_catalog
from kiln_runtime.db import Database, SessionFactory
from kiln_runtime.testing import EventDriver
from kiln_scheduler import repository
from kiln_scheduler.config import SchedulerSettings
from kiln_scheduler.handlers import Scheduler
from kiln_scheduler.queue import QueuedJobState
from kiln_scheduler.tables import MESSAGING

POOL = "cpu-image"


def ts(when: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(when)
    return out


def event(kind: str, message: Any, account: str, job_id: str) -> Event:
    return decode(encode(new_event(kind, message, account_id=account, job_id=job_id)))


def spec(deadline_s: float = 120.0) -> common_pb2.JobSpec:
    now = datetime.now(UTC)
    return common_pb2.JobSpec(
        model="kiln/prompt-to-image",
        input_json='{"prompt":"x"}',
        pool=POOL,
        created_at=ts(now),
        deadline=ts(now + timedelta(seconds=deadline_s)),
    )


_DATABASES: dict[str, Database] = {}


def database_of(sessions: SessionFactory) -> Database:
    url = str(sessions.kw["bind"].url.render_as_string(hide_password=False))
    if url not in _DATABASES:
        _DATABASES[url] = Database(url, service="scheduler")
    return _DATABASES[url]


@dataclass
class Harness:
    """The scheduler's handlers and timer on a test database, with a clock of the test's own:
    every event is handled at `now` (fixed when the harness is made) and each tick at the time
    the test names, so no decision depends on how fast the machine runs the test."""

    sessions: SessionFactory
    settings: SchedulerSettings
    seen_outbox_id: int = 0
    emitted: list[Event] = field(default_factory=list)
    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        self.scheduler = Scheduler(
            load_catalog(), self.settings, clock=lambda: self._at or self.now
        )
        self.db = database_of(self.sessions)
        self.driver = EventDriver(
            self.db,
            MESSAGING,
            self.scheduler.handlers(),
            group="scheduler",
            clock=lambda: self._at or self.now,
        )
        self._at: datetime | None = None

    async def deliver(self, ev: Event) -> list[Event]:
        await self.driver.process(ev)
        return await self.drain()

    async def tick(self, now: datetime) -> list[Event]:
        self._at = now
        try:
            await self.driver.write(self.scheduler.tick)
        finally:
            self._at = None
        return await self.drain()

    async def assign(self, partitions: frozenset[int], count: int, at: datetime) -> None:
        """The consumer's assignment hook, as a rebalance (or a restart) calls it at `at`."""
        self._at = at
        try:
            await self.db.write(lambda c: self.scheduler.assigned(c, partitions, count))
        finally:
            self._at = None

    def watch_again(self, at: datetime, partitions: frozenset[int] | None = None) -> None:
        """What the timer does while the consumer holds (or the broker is silent on
        `partitions`), at `at`."""
        self._at = at
        try:
            self.scheduler.watch_again(partitions)
        finally:
            self._at = None

    async def drain(self) -> list[Event]:
        table = MESSAGING.outbox
        async with self.sessions() as session:
            rows = (
                await session.execute(
                    select(table.c.id, table.c.payload)
                    .where(table.c.id > self.seen_outbox_id)
                    .order_by(table.c.id)
                )
            ).all()
        if rows:
            self.seen_outbox_id = rows[-1].id
        new = [decode(r.payload) for r in rows]
        self.emitted += new
        return new

    async def reserve(self, account: str, job_id: str | None = None, **kw: Any) -> str:
        job_id = job_id or f"job_{uuid.uuid4().hex[:16]}"
        message = credits_pb2.CreditsReserved(spec=spec(**kw), amount_millicredits=5000)
        await self.deliver(event("credits.reserved", message, account, job_id))
        return job_id

    async def row(self, job_id: str) -> QueuedJobState:
        found = await self.db.read(lambda c: repository.job(c, job_id))
        assert found is not None
        return found


def of_type(events: list[Event], kind: str) -> list[Event]:
    return [e for e in events if e.type == kind]


def started(account: str, job_id: str, attempt: int) -> Event:
    return event("job.started", jobs_pb2.JobStarted(attempt=attempt), account, job_id)


def completed(account: str, job_id: str, attempt: int) -> Event:
    return event(
        "job.completed",
        jobs_pb2.JobCompleted(spec=spec(), price_millicredits=5000, attempt=attempt),
        account,
        job_id,
    )


def attempt_failed(account: str, job_id: str, attempt: int, code: str, retryable: bool) -> Event:
    return event(
        "job.attempt_failed",
        jobs_pb2.JobAttemptFailed(
            attempt=attempt, error_code=code, error_message=f"{code} happened", retryable=retryable
        ),
        account,
        job_id,
    )


def cancel_requested(account: str, job_id: str) -> Event:
    return event("job.cancel_requested", jobs_pb2.JobCancelRequested(), account, job_id)
