"""The scheduler's own durable queue: one row per reserved job until it ends."""

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Integer, LargeBinary, MetaData, String
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
    # queued -> dispatched -> running -> finished
    status: Mapped[str] = mapped_column(String(16), index=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    enqueued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
