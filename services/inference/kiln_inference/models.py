"""Inference keeps nothing durable but its inbox, outbox and the work it accepted."""

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
    status: Mapped[str] = mapped_column(String(16), index=True)  # pending | running
    accepted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
