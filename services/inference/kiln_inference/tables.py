"""Inference keeps nothing durable but its inbox, outbox, the work it accepted, the cancels it
was told of, and the results it stored (so that it can delete them after their retention)."""

from datetime import datetime

from sqlalchemy import DateTime, Integer, LargeBinary, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from kiln_runtime.messaging import add_messaging_tables, utcnow


class Base(DeclarativeBase):
    metadata = MetaData()


MESSAGING = add_messaging_tables(Base.metadata)


class WorkItem(Base):
    """A dispatched job attempt this worker accepted; deleted once its outcome is emitted."""

    __tablename__ = "work_items"

    id: Mapped[str] = mapped_column(String(96), primary_key=True)  # job_id:attempt
    job_id: Mapped[str] = mapped_column(String(64), index=True)
    account_id: Mapped[str] = mapped_column(String(64))
    dispatch: Mapped[bytes] = mapped_column(LargeBinary)  # JobDispatched, serialized
    attempt: Mapped[int] = mapped_column(Integer)
    # pending | running | canceling (a cancel arrived while it ran)
    status: Mapped[str] = mapped_column(String(16), index=True)
    accepted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CanceledJob(Base):
    """A job whose cancel this worker saw: a dispatch of it that arrives later never runs."""

    __tablename__ = "canceled_jobs"

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    canceled_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, index=True
    )


class StoredResult(Base):
    """A result blob this worker wrote; the retention sweep deletes it when it is old enough."""

    __tablename__ = "stored_results"

    blob_key: Mapped[str] = mapped_column(String(200), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(64))
    stored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
