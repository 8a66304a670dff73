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
from kiln_runtime.consuming import EventProcessor
from kiln_runtime.db import SessionFactory, transaction
from kiln_runtime.outbox import Outbox
from kiln_scheduler import repository
from kiln_scheduler.config import SchedulerSettings
from kiln_scheduler.consumers import Scheduler
from kiln_scheduler.models import MESSAGING, QueuedJob

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


@dataclass
class Harness:
    sessions: SessionFactory
    settings: SchedulerSettings
    seen_outbox_id: int = 0
    emitted: list[Event] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.scheduler = Scheduler(load_catalog(), self.settings)
        self.processor = EventProcessor(
            self.sessions, MESSAGING, consumer="scheduler", handlers=self.scheduler.handlers()
        )

    async def deliver(self, ev: Event) -> list[Event]:
        await self.processor.process(ev)
        return await self.drain()

    async def tick(self, now: datetime) -> list[Event]:
        outbox = Outbox()
        async with transaction(self.sessions) as session:
            await repository.lock(session)
            await self.scheduler.tick(session, outbox, now)
            await outbox.write(session, MESSAGING)
        return await self.drain()

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

    async def row(self, job_id: str) -> QueuedJob:
        async with self.sessions() as session:
            found = await repository.job(session, job_id)
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
