"""The scheduler's tables: its durable queue (one row per reserved job; finished rows stay as
history), per-pool duration statistics, and per-pool slots in use (shared by every scheduler
instance on the database). The schema changes only through the Alembic migrations of
`kiln_scheduler/migrations/`; a test holds them equal to these models."""

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Float, Integer, LargeBinary, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from kiln_runtime.messaging import add_messaging_tables, utcnow


class Base(DeclarativeBase):
    metadata = MetaData()


MESSAGING = add_messaging_tables(Base.metadata)


class QueuedJob(Base):
    __tablename__ = "queued_jobs"

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    job_id: Mapped[str] = mapped_column(String(64), unique=True)
    account_id: Mapped[str] = mapped_column(String(64), index=True)
    pool: Mapped[str] = mapped_column(String(64), index=True)
    spec: Mapped[bytes] = mapped_column(LargeBinary)  # JobSpec, serialized
    price_millicredits: Mapped[int] = mapped_column(BigInteger)
    # queued -> dispatched -> running -> finished; dispatched/running -> canceling -> finished;
    # a failed attempt that is retried goes back to queued (with ready_at). cancel_requested:
    # a cancel that arrived before the reservation.
    status: Mapped[str] = mapped_column(String(16), index=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)  # the last dispatched attempt
    enqueued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Added with issue 5 (nullable: `migrate` adds them to an existing table).
    deadline_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ready_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_seen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # What the last job.queued said, so that updates go out only when the standing changed.
    queue_position: Mapped[int | None] = mapped_column(Integer)
    queue_reason: Mapped[str | None] = mapped_column(String(32))
    last_error_code: Mapped[str | None] = mapped_column(String(64))
    # completed | failed | timeout | canceled, once finished.
    outcome: Mapped[str | None] = mapped_column(String(16))
    # Moved by every update, which names the version it read: an instance whose copy of the
    # row is stale (it lost the job's partition and does not know it yet) changes nothing
    # (docs/architecture.md, "Scheduler").
    version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class PoolStats(Base):
    """Per pool: the moving average of job durations (job.started → job.completed), for ETAs."""

    __tablename__ = "pool_stats"

    pool: Mapped[str] = mapped_column(String(64), primary_key=True)
    mean_duration_s: Mapped[float | None] = mapped_column(Float)
    samples: Mapped[int] = mapped_column(Integer, default=0)


class PoolSlots(Base):
    """Per pool: how many of its jobs are in flight (dispatched, running, canceling) across
    every scheduler instance. Moved in the same transaction as the jobs' statuses; a dispatch
    pass takes only what `capacity - in_flight` leaves (docs/architecture.md, "Scheduler")."""

    __tablename__ = "pool_slots"

    pool: Mapped[str] = mapped_column(String(64), primary_key=True)
    in_flight: Mapped[int] = mapped_column(Integer, default=0)
