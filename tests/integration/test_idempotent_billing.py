"""Billing's handlers behind the runtime's EventProcessor, on a real (SQLite) database:
an event delivered twice, or a job submitted twice, changes the ledger once."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from kiln_billing.consumers import make_handlers
from kiln_billing.models import MESSAGING, Base, LedgerEntry
from kiln_contracts import Event, decode, encode, new_event
from kiln_contracts.v1 import common_pb2, credits_pb2, jobs_pb2
from kiln_runtime.catalog import load_catalog
from kiln_runtime.consuming import EventProcessor
from kiln_runtime.db import SessionFactory, make_engine, make_session_factory

pytestmark = pytest.mark.integration
ACCOUNT = "acct_test"


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[SessionFactory]:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path}/billing.db")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield make_session_factory(engine)
    await engine.dispose()


def processor(sessions: SessionFactory) -> EventProcessor:
    return EventProcessor(
        sessions, MESSAGING, consumer="billing", handlers=make_handlers(load_catalog())
    )


def grant(millicredits: int) -> Event:
    message = credits_pb2.CreditsGranted(grant_id="g1", amount_millicredits=millicredits)
    return decode(encode(new_event("credits.granted", message, account_id=ACCOUNT)))


def submitted(job_id: str, sandbox: bool = False) -> Event:
    spec = common_pb2.JobSpec(model="kiln/prompt-to-image", sandbox=sandbox, pool="cpu-image")
    env = new_event(
        "job.submitted", jobs_pb2.JobSubmitted(spec=spec), account_id=ACCOUNT, job_id=job_id
    )
    return decode(encode(env))


def finished(kind: str, job_id: str) -> Event:
    message = jobs_pb2.JobCompleted() if kind == "job.completed" else jobs_pb2.JobFailed()
    return decode(encode(new_event(kind, message, account_id=ACCOUNT, job_id=job_id)))


async def outbox_types(sessions: SessionFactory) -> list[str]:
    async with sessions() as session:
        rows = await session.execute(
            select(MESSAGING.outbox.c.topic).order_by(MESSAGING.outbox.c.id)
        )
        return [r.topic for r in rows]


async def test_redelivered_events_change_nothing(sessions: SessionFactory) -> None:
    billing = processor(sessions)
    g, s, c = grant(7_000), submitted("job_1"), finished("job.completed", "job_1")
    for event in (g, g, s, s, c, c):
        await billing.process(event)
    assert await outbox_types(sessions) == [
        "credits.applied",
        "credits.reserved",
        "credits.captured",
    ]
    async with sessions() as session:
        entries = await session.scalar(select(func.count()).select_from(LedgerEntry))
    assert entries == 3


async def test_a_job_resubmitted_under_a_new_event_id_is_decided_once(
    sessions: SessionFactory,
) -> None:
    billing = processor(sessions)
    await billing.process(grant(7_000))
    await billing.process(submitted("job_1"))
    again = submitted("job_1")  # same job, new event id: the inbox alone would not catch it
    assert await billing.process(again)
    assert await outbox_types(sessions) == ["credits.applied", "credits.reserved"]


async def test_too_few_credits_rejects_and_a_failure_refunds_once(
    sessions: SessionFactory,
) -> None:
    billing = processor(sessions)
    await billing.process(grant(7_000))
    await billing.process(submitted("job_1"))  # 5 credits of 7
    await billing.process(submitted("job_2"))  # 5 more: rejected
    await billing.process(finished("job.failed", "job_1"))
    await billing.process(finished("job.failed", "job_1"))  # a second failure refunds nothing
    await billing.process(finished("job.completed", "job_1"))  # nor charges after a refund
    assert await outbox_types(sessions) == [
        "credits.applied",
        "credits.reserved",
        "credits.rejected",
        "credits.released",
    ]


async def test_sandbox_jobs_reserve_nothing(sessions: SessionFactory) -> None:
    billing = processor(sessions)
    await billing.process(submitted("job_s", sandbox=True))  # no credits at all
    await billing.process(finished("job.completed", "job_s"))
    assert await outbox_types(sessions) == ["credits.reserved", "credits.captured"]
