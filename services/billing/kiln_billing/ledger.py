"""Billing's decisions, as pure functions of what billing knows of an account and a job.

The ledger is double-entry: every booking is a set of postings to *books* that sums to zero.
Each customer account has three books (`available`, `reserved`, `spent`); the system book
`system.grants` is where granted credits come from, so it holds minus everything ever granted.
For every account, at every moment:

    granted (= -system.grants) = available + reserved + spent

A job's credits follow one small state machine (`JobCharge.status`):

    (none) --submitted, enough credits--> reserved --completed--> captured
           --submitted, too few---------> rejected   --failed/canceled--> released
           --completed/failed/canceled--> ended  (the end came before the submission: remembered)
    ended  --submitted--> captured (completed, and the account can pay: charged at once)
                        | unpaid   (completed, and the account cannot pay: never negative)
                        | void     (failed or canceled: nothing to hold, nothing to charge)

Every other event leaves the state alone, so redelivered and reordered events charge a job at
most once, refund it at most once, and never both. Sandbox jobs cost nothing and book nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Literal


class Book(StrEnum):
    AVAILABLE = "available"  # customer: credits the account may spend
    RESERVED = "reserved"  # customer: held for jobs that have not ended
    SPENT = "spent"  # customer: charged for completed jobs
    GRANTS = "system.grants"  # system: minus every credit granted to customers


CUSTOMER_BOOKS = (Book.AVAILABLE, Book.RESERVED, Book.SPENT)

BookingKind = Literal["grant", "revoke", "reserve", "capture", "release", "charge"]
ChargeStatus = Literal["reserved", "captured", "released", "rejected", "ended", "void", "unpaid"]
JobEnd = Literal["completed", "failed", "canceled"]
Emitted = Literal["reserved", "rejected", "captured", "released"]

FINAL_STATUSES: frozenset[str] = frozenset({"captured", "released", "rejected", "void", "unpaid"})
JOB_ENDS: tuple[JobEnd, ...] = ("completed", "failed", "canceled")


class LedgerError(RuntimeError):
    """A booking would break the ledger's rules (unbalanced, or a book below zero)."""


@dataclass(frozen=True)
class Posting:
    book: Book
    amount: int  # signed millicredits; a booking's postings sum to zero


@dataclass(frozen=True)
class Booking:
    kind: BookingKind
    # What makes the booking unique in the whole ledger: "grant:<id>", "reserve:<job>",
    # "settle:<job>". Capture, release and charge of one job share "settle:<job>", so the
    # database itself refuses a second settlement of a job.
    entry_key: str
    amount: int  # the millicredits moved (positive)
    postings: tuple[Posting, ...]

    def __post_init__(self) -> None:
        if sum(p.amount for p in self.postings) != 0:
            raise LedgerError(f"booking {self.entry_key} does not balance: {self.postings}")
        if self.amount < 0:
            raise LedgerError(f"booking {self.entry_key} has a negative amount")


@dataclass(frozen=True)
class Balances:
    """One account's books. `granted` is what the system book gave this account."""

    granted: int
    available: int
    reserved: int
    spent: int

    @classmethod
    def zero(cls) -> Balances:
        return cls(0, 0, 0, 0)

    @property
    def conserved(self) -> bool:
        return self.granted == self.available + self.reserved + self.spent


@dataclass(frozen=True)
class JobCharge:
    """What billing knows of one job's credits."""

    status: ChargeStatus
    amount: int  # the price held (or charged) for the job, fixed at its reservation
    sandbox: bool
    ended_with: JobEnd | None = None  # the end that came before the submission

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES


@dataclass(frozen=True)
class Decision:
    """What one event does: the job's new state, the booking, and the event to emit."""

    charge: JobCharge | None  # the new state; None when the event changes nothing
    booking: Booking | None = None
    emit: Emitted | None = None
    reason: str = ""  # why, for logs and metrics ("duplicate", "after_settlement", ...)

    @property
    def changes(self) -> bool:
        return self.charge is not None


NO_CHANGE_DUPLICATE = Decision(None, reason="duplicate")


def transfer(source: Book, target: Book, amount: int) -> tuple[Posting, ...]:
    """Move `amount` from one book to another (no postings for zero)."""
    if amount < 0:
        raise LedgerError("a transfer moves a positive amount")
    if amount == 0:
        return ()
    return (Posting(source, -amount), Posting(target, amount))


def apply_postings(balances: Balances, postings: tuple[Posting, ...]) -> Balances:
    """The account's books after `postings`; refuses to take a customer book below zero."""
    granted, available, reserved, spent = (
        balances.granted,
        balances.available,
        balances.reserved,
        balances.spent,
    )
    for posting in postings:
        if posting.book is Book.GRANTS:
            granted -= posting.amount
        elif posting.book is Book.AVAILABLE:
            available += posting.amount
        elif posting.book is Book.RESERVED:
            reserved += posting.amount
        else:
            spent += posting.amount
    after = Balances(granted, available, reserved, spent)
    if min(after.available, after.reserved, after.spent) < 0:
        raise LedgerError(f"a booking would take a book below zero: {balances} -> {after}")
    return after


def balances_from_books(books: dict[str, int]) -> Balances:
    """An account's balances from the sums of its postings per book."""
    return Balances(
        granted=-books.get(Book.GRANTS, 0),
        available=books.get(Book.AVAILABLE, 0),
        reserved=books.get(Book.RESERVED, 0),
        spent=books.get(Book.SPENT, 0),
    )


# ------------------------------------------------------------------------------------- grants


def grant_booking(grant_id: str, amount: int, available: int) -> Booking:
    """Book a grant; a revocation (negative) takes at most what is available, so a balance
    never goes below zero. `Booking.amount` is what was actually moved."""
    key = f"grant:{grant_id}"
    if amount >= 0:
        return Booking("grant", key, amount, transfer(Book.GRANTS, Book.AVAILABLE, amount))
    taken = min(-amount, max(available, 0))
    return Booking("revoke", key, taken, transfer(Book.AVAILABLE, Book.GRANTS, taken))


def booked_grant(booking: Booking) -> int:
    """The signed amount a grant booking moved into the account (negative for a revocation)."""
    return booking.amount if booking.kind == "grant" else -booking.amount


# ---------------------------------------------------------------------------------- job events


def job_price(catalog_price: int | None, sandbox: bool) -> int | None:
    """What a job costs: nothing in the sandbox, else the catalog's price (None: unknown)."""
    if sandbox:
        return 0
    if catalog_price is not None and catalog_price < 0:
        raise LedgerError("a price must not be negative")
    return catalog_price


def decide_submission(
    job_id: str,
    current: JobCharge | None,
    *,
    available: int,
    price: int | None,
    sandbox: bool,
) -> Decision:
    """`job.submitted`: hold the whole price or nothing; a job is decided once.

    `price` is the catalog's price now (0 for sandbox jobs, None for a model billing does not
    know, which is rejected). It travels with the reservation: capture uses the held amount.
    """
    if current is None:
        if price is None or price > available:
            return Decision(
                JobCharge("rejected", 0, sandbox), emit="rejected", reason="insufficient_credits"
            )
        booking = None
        if price > 0:
            booking = Booking(
                "reserve",
                f"reserve:{job_id}",
                price,
                transfer(Book.AVAILABLE, Book.RESERVED, price),
            )
        return Decision(JobCharge("reserved", price, sandbox), booking, "reserved", "reserved")
    if current.status != "ended":
        return NO_CHANGE_DUPLICATE  # decided already (a redelivery, or a resubmission)
    # The job ended before billing saw it submitted: never hold credits for an ended job
    # (a credits.reserved now would queue it again); apply the end that was remembered.
    if current.ended_with != "completed":
        return Decision(replace(current, status="void", sandbox=sandbox), reason="ended_unreserved")
    if price is None or price > available:
        return Decision(replace(current, status="unpaid", sandbox=sandbox), reason="unpaid")
    booking = None
    if price > 0:
        booking = Booking(
            "charge", f"settle:{job_id}", price, transfer(Book.AVAILABLE, Book.SPENT, price)
        )
    charged = JobCharge("captured", price, sandbox, ended_with="completed")
    return Decision(charged, booking, "captured", "charged_after_end")


def decide_end(job_id: str, current: JobCharge | None, end: JobEnd, *, sandbox: bool) -> Decision:
    """`job.completed` captures a held reservation; `job.failed` / `job.canceled` release it.

    Only a held reservation moves, and only once: an end after a settlement, a rejection or an
    earlier end changes nothing. An end before the submission is remembered."""
    if current is None:
        return Decision(JobCharge("ended", 0, sandbox, ended_with=end), reason="ended_first")
    if current.status != "reserved":
        return Decision(None, reason="after_settlement" if current.final else "duplicate_end")
    amount = current.amount
    if end == "completed":
        booking = None
        if amount > 0:
            booking = Booking(
                "capture", f"settle:{job_id}", amount, transfer(Book.RESERVED, Book.SPENT, amount)
            )
        return Decision(replace(current, status="captured"), booking, "captured", "captured")
    booking = None
    if amount > 0:
        booking = Booking(
            "release", f"settle:{job_id}", amount, transfer(Book.RESERVED, Book.AVAILABLE, amount)
        )
    return Decision(replace(current, status="released"), booking, "released", end)


_ENDS_BY_EVENT: dict[str, JobEnd] = {f"job.{end}": end for end in JOB_ENDS}


def end_of(event_type: str) -> JobEnd:
    """`job.completed` -> "completed", and so on."""
    try:
        return _ENDS_BY_EVENT[event_type]
    except KeyError:
        raise ValueError(f"{event_type} does not end a job") from None
