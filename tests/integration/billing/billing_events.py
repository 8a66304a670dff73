"""Building billing's input events the way the gateway, scheduler and inference emit them,
and reading what billing wrote (outbox, ledger) — for the ledger's integration tests."""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass

from sqlalchemy import func, select

from kiln_billing.handlers import make_handlers
from kiln_billing.tables import MESSAGING, LedgerTransaction
from kiln_billing.verify import LedgerReport, verify_ledger_async
from kiln_contracts import Event, decode, encode, new_event
from kiln_contracts.v1 import common_pb2, credits_pb2, jobs_pb2
from kiln_runtime.catalog import Catalog, load_catalog
from kiln_runtime.db import Database, SessionFactory
from kiln_runtime.testing import EventDriver

IMAGE = "kiln/prompt-to-image"  # 5 credits in the default catalog
IMAGE_PRICE = 5_000


_DATABASES: dict[str, Database] = {}


def database_url_of(sessions: SessionFactory) -> str:
    return str(sessions.kw["bind"].url.render_as_string(hide_password=False))


def database_of(sessions: SessionFactory) -> Database:
    """One runtime Database (sync engine, writer thread) per test database."""
    url = database_url_of(sessions)
    if url not in _DATABASES:
        _DATABASES[url] = Database(url, service="billing")
    return _DATABASES[url]


def processor(sessions: SessionFactory, catalog: Catalog | None = None) -> EventDriver:
    """Billing's handlers as the consumer runs them (inbox, outbox, one transaction per
    batch), on the test's database."""
    return EventDriver(
        database_of(sessions), MESSAGING, make_handlers(catalog or load_catalog()), group="billing"
    )


def new_account() -> str:
    return f"acct_{uuid.uuid4().hex[:12]}"


def new_job() -> str:
    return f"job_{uuid.uuid4().hex}"


def grant(account: str, millicredits: int, grant_id: str | None = None) -> Event:
    message = credits_pb2.CreditsGranted(
        grant_id=grant_id or f"grant_{uuid.uuid4().hex[:12]}", amount_millicredits=millicredits
    )
    return decode(encode(new_event("credits.granted", message, account_id=account)))


def spec(model: str = IMAGE, sandbox: bool = False) -> common_pb2.JobSpec:
    return common_pb2.JobSpec(
        model=model, input_json='{"prompt":"x"}', sandbox=sandbox, pool="cpu-image"
    )


def submitted(account: str, job_id: str, sandbox: bool = False, model: str = IMAGE) -> Event:
    env = new_event(
        "job.submitted",
        jobs_pb2.JobSubmitted(spec=spec(model, sandbox)),
        account_id=account,
        job_id=job_id,
    )
    return decode(encode(env))


def ended(kind: str, account: str, job_id: str, sandbox: bool = False, price: int = 0) -> Event:
    """job.completed / job.failed / job.canceled, as inference and the scheduler emit them."""
    s = spec(sandbox=sandbox)
    message: jobs_pb2.JobCompleted | jobs_pb2.JobFailed | jobs_pb2.JobCanceled
    if kind == "job.completed":
        message = jobs_pb2.JobCompleted(spec=s, price_millicredits=price)
    elif kind == "job.failed":
        message = jobs_pb2.JobFailed(spec=s, price_millicredits=price, error_code="MODEL_ERROR")
    else:
        message = jobs_pb2.JobCanceled(spec=s, price_millicredits=price)
    return decode(encode(new_event(kind, message, account_id=account, job_id=job_id)))


@dataclass(frozen=True)
class Emitted:
    type: str
    account_id: str
    job_id: str
    message: object


async def emitted(sessions: SessionFactory, account: str | None = None) -> list[Emitted]:
    """Billing's outbox, decoded, in order (optionally one account's)."""
    async with sessions() as session:
        rows = await session.execute(
            select(MESSAGING.outbox.c.payload).order_by(MESSAGING.outbox.c.id)
        )
        events = [decode(row.payload) for row in rows]
    return [
        Emitted(e.type, e.account_id, e.job_id, e.message)
        for e in events
        if account is None or e.account_id == account
    ]


async def emitted_types(sessions: SessionFactory, account: str | None = None) -> list[str]:
    return [e.type for e in await emitted(sessions, account)]


async def bookings_by_job(sessions: SessionFactory, job_id: str) -> Counter[str]:
    async with sessions() as session:
        rows = await session.execute(
            select(LedgerTransaction.kind, func.count())
            .where(LedgerTransaction.job_id == job_id)
            .group_by(LedgerTransaction.kind)
        )
        return Counter({kind: int(n) for kind, n in rows})


async def check_ledger(sessions: SessionFactory) -> LedgerReport:
    return await verify_ledger_async(database_url_of(sessions))


async def sound_ledger(sessions: SessionFactory) -> LedgerReport:
    report = await check_ledger(sessions)
    assert report.ok, report.render()
    return report
