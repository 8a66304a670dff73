"""Billing's tables: the double-entry ledger (append-only), each job's charge, and the
per-account balance cache. The schema changes only through the Alembic migrations of
`kiln_billing/migrations/`; a test holds them equal to these models."""

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from kiln_runtime.messaging import add_messaging_tables, utcnow

# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
_Id = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData()


MESSAGING = add_messaging_tables(Base.metadata)


class LedgerTransaction(Base):
    """One booking: a set of postings that sums to zero. Rows are only ever inserted."""

    __tablename__ = "ledger_transactions"
    __table_args__ = (UniqueConstraint("entry_key", name="uq_ledger_transactions_entry_key"),)

    id: Mapped[int] = mapped_column(_Id, primary_key=True, autoincrement=True)
    # The customer account the booking concerns (every booking concerns exactly one).
    account_id: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    # "grant:<id>", "reserve:<job>", "settle:<job>": unique, so no booking happens twice and
    # no job is both captured and released.
    entry_key: Mapped[str] = mapped_column(String(160))
    job_id: Mapped[str | None] = mapped_column(String(64), index=True)
    grant_id: Mapped[str | None] = mapped_column(String(64))
    amount_millicredits: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    postings: Mapped[list["LedgerPosting"]] = relationship(
        back_populates="transaction", lazy="raise"
    )


class LedgerPosting(Base):
    """One leg of a booking: a signed amount on one book of one account."""

    __tablename__ = "ledger_postings"
    __table_args__ = (Index("ix_ledger_postings_account_book", "account_id", "book"),)

    id: Mapped[int] = mapped_column(_Id, primary_key=True, autoincrement=True)
    transaction_id: Mapped[int] = mapped_column(
        ForeignKey("ledger_transactions.id", name="fk_ledger_postings_transaction"), index=True
    )
    # Customer books are the account's own; the system book (`system.grants`) is shared, and
    # its postings carry the account of their booking so that "granted" is known per account.
    account_id: Mapped[str] = mapped_column(String(64))
    book: Mapped[str] = mapped_column(String(32))
    amount_millicredits: Mapped[int] = mapped_column(BigInteger)

    transaction: Mapped[LedgerTransaction] = relationship(back_populates="postings", lazy="raise")


class Reservation(Base):
    """A job's credits: the state machine of kiln_billing.service (one row per job)."""

    __tablename__ = "reservations"

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(64), index=True)
    # The price held for the job at its reservation (0 for sandbox and rejected jobs).
    amount_millicredits: Mapped[int] = mapped_column(BigInteger)
    sandbox: Mapped[bool] = mapped_column(Boolean)
    # reserved | captured | released | rejected | ended | void | unpaid
    status: Mapped[str] = mapped_column(String(16))
    # The job's end when it came before its submission (completed | failed | canceled).
    ended_with: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    settled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AccountBalance(Base):
    """A cache of what an account's postings add up to, updated in the same transaction as
    each booking; `kiln-billing-verify` checks it against the postings."""

    __tablename__ = "account_balances"

    account_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    granted_millicredits: Mapped[int] = mapped_column(BigInteger, default=0)
    available_millicredits: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved_millicredits: Mapped[int] = mapped_column(BigInteger, default=0)
    spent_millicredits: Mapped[int] = mapped_column(BigInteger, default=0)
    # One more with every change of the row: the order of the balances billing announces.
    version: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
