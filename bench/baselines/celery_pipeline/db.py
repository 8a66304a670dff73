"""The baseline's SQL: accounts with a credit balance and the jobs table, in SQLite.

SQLite in WAL mode with ``synchronous=NORMAL`` and a 30 s busy timeout: the settings Kiln's own
services use locally (kiln_runtime.db). Two processes write to the file (the HTTP endpoint and
the Celery worker), so every write transaction starts with ``BEGIN IMMEDIATE`` (the sqlite3
module's ``isolation_level``): it takes the write lock up front and waits for it under the busy
timeout, where a deferred transaction that read first could fail with SQLITE_BUSY on upgrading.
Reads run outside any transaction.

The credit decision is one conditional UPDATE (``balance >= price`` in its WHERE clause), so two
concurrent requests can never spend the same credits; the job row goes in in the same
transaction, so a charge without a job (or a job without a charge) cannot be committed.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from sqlalchemy import (
    Column,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    func,
    select,
    update,
)

QUEUED: Final = "queued"
COMPLETED: Final = "completed"
FAILED: Final = "failed"

metadata = MetaData()

accounts = Table(
    "accounts",
    metadata,
    Column("id", String, primary_key=True),
    Column("api_key_sha256", String, nullable=False, unique=True),
    Column("balance", Integer, nullable=False),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String, primary_key=True),
    Column("account_id", String, nullable=False),
    Column("model", String, nullable=False),
    Column("kind", String, nullable=False),
    Column("price", Integer, nullable=False),
    Column("status", String, nullable=False),
    Column("webhook_url", String),
    Column("delay_ms", Integer),  # None: the Triton sandbox model's default delay
    Column("outcome", String, nullable=False),
    Column("result_path", String),
    Column("error_code", String),
    Column("created_at", Float, nullable=False),
    Column("finished_at", Float),
)


def make_engine(path: Path) -> Engine:
    """An engine on the SQLite file ``path`` (one per process: made after a fork, never before)."""
    engine = create_engine(
        f"sqlite:///{path}",
        # enough connections for the endpoint's thread pool and the worker's threads
        pool_size=16,
        max_overflow=48,
        connect_args={"timeout": 30, "isolation_level": "IMMEDIATE", "check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return engine


def create_schema(engine: Engine) -> None:
    metadata.create_all(engine)


def key_hash(api_key: str) -> str:
    # Only the key's hash is stored, as Kiln's gateway does.
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


# --- accounts ----------------------------------------------------------------------------------


def create_account(engine: Engine, credits: int) -> str:
    """A new account holding ``credits``; returns its API key."""
    api_key = "sk_test_" + secrets.token_urlsafe(24)
    with engine.begin() as conn:
        conn.execute(
            accounts.insert().values(
                id=uuid.uuid4().hex, api_key_sha256=key_hash(api_key), balance=credits
            )
        )
    return api_key


def balance(engine: Engine, api_key: str) -> int:
    with engine.connect() as conn:
        value = conn.execute(
            select(accounts.c.balance).where(accounts.c.api_key_sha256 == key_hash(api_key))
        ).scalar_one_or_none()
    if value is None:
        raise KeyError("no account has this API key")
    return int(value)


# --- jobs --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewJob:
    model: str
    kind: str
    price: int
    webhook_url: str | None
    delay_ms: int | None
    outcome: str


class UnknownKey(Exception):
    pass


class InsufficientCredits(Exception):
    pass


def charge_and_insert(engine: Engine, api_key: str, job: NewJob) -> str:
    """Debit the job's price and insert it as queued, in one transaction; returns its id.

    Raises UnknownKey or InsufficientCredits (and then nothing was written).
    """
    job_id = "job_" + uuid.uuid4().hex
    with engine.begin() as conn:
        # One statement decides and debits; RETURNING names the account it charged.
        charged = conn.execute(
            update(accounts)
            .where(accounts.c.api_key_sha256 == key_hash(api_key))
            .where(accounts.c.balance >= job.price)
            .values(balance=accounts.c.balance - job.price)
            .returning(accounts.c.id)
        ).scalar_one_or_none()
        if charged is None:
            exists = conn.execute(
                select(accounts.c.id).where(accounts.c.api_key_sha256 == key_hash(api_key))
            ).scalar_one_or_none()
            raise InsufficientCredits() if exists is not None else UnknownKey()
        conn.execute(
            jobs.insert().values(
                id=job_id,
                account_id=charged,
                model=job.model,
                kind=job.kind,
                price=job.price,
                status=QUEUED,
                webhook_url=job.webhook_url,
                delay_ms=job.delay_ms,
                outcome=job.outcome,
                created_at=time.time(),
            )
        )
    return job_id


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    status: str
    webhook_url: str | None
    delay_ms: int | None
    outcome: str
    error_code: str | None


def get_job(engine: Engine, job_id: str) -> Job | None:
    with engine.connect() as conn:
        row = conn.execute(
            select(
                jobs.c.id,
                jobs.c.kind,
                jobs.c.status,
                jobs.c.webhook_url,
                jobs.c.delay_ms,
                jobs.c.outcome,
                jobs.c.error_code,
            ).where(jobs.c.id == job_id)
        ).one_or_none()
    return None if row is None else Job(*row)


def complete_job(engine: Engine, job_id: str, result_path: str) -> bool:
    """Mark a queued job completed; False when it was not queued (already finished)."""
    with engine.begin() as conn:
        done = conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.status == QUEUED)
            .values(status=COMPLETED, result_path=result_path, finished_at=time.time())
        )
    return done.rowcount == 1


def fail_job(engine: Engine, job_id: str, error_code: str) -> bool:
    """Mark a queued job failed and refund its price, in one transaction; False when it was
    not queued (so a retried task never refunds twice)."""
    with engine.begin() as conn:
        failed = conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.status == QUEUED)
            .values(status=FAILED, error_code=error_code, finished_at=time.time())
            .returning(jobs.c.account_id, jobs.c.price)
        ).one_or_none()
        if failed is None:
            return False
        account_id, price = failed
        conn.execute(
            update(accounts)
            .where(accounts.c.id == account_id)
            .values(balance=accounts.c.balance + price)
        )
    return True


def job_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(select(jobs.c.status, func.count()).group_by(jobs.c.status)).all()
    return {str(status): int(count) for status, count in rows}
