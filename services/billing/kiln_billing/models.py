"""Billing's tables: the append-only ledger, reservations, and the per-account balance cache."""

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, Integer, MetaData, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from kiln_runtime.messaging import add_messaging_tables, utcnow


class Base(DeclarativeBase):
    metadata = MetaData()


MESSAGING = add_messaging_tables(Base.metadata)


class LedgerEntry(Base):
    """One booked movement of millicredits. Rows are only ever inserted."""

    __tablename__ = "ledger_entries"
    __table_args__ = (UniqueConstraint("account_id", "entry_key", name="uq_ledger_entry_key"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    account_id: Mapped[str] = mapped_column(String(64), index=True)
    # What makes the entry unique: "grant:<id>", "reserve:<job>", "capture:<job>", ...
    entry_key: Mapped[str] = mapped_column(String(160))
    kind: Mapped[str] = mapped_column(String(16))
    job_id: Mapped[str | None] = mapped_column(String(64), index=True)
    amount_millicredits: Mapped[int] = mapped_column(BigInteger)
    sandbox: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Reservation(Base):
    __tablename__ = "reservations"

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(64), index=True)
    amount_millicredits: Mapped[int] = mapped_column(BigInteger)
    sandbox: Mapped[bool] = mapped_column(Boolean)
    # reserved -> captured | released; rejected is final from the start.
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    settled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AccountBalance(Base):
    """A cache of what the ledger adds up to, updated in the same transaction as each entry."""

    __tablename__ = "account_balances"

    account_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    granted_millicredits: Mapped[int] = mapped_column(BigInteger, default=0)
    available_millicredits: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved_millicredits: Mapped[int] = mapped_column(BigInteger, default=0)
    captured_millicredits: Mapped[int] = mapped_column(BigInteger, default=0)
