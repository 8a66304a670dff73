"""Billing's pure decisions: the double-entry bookings and each job's credit state machine."""

import itertools
from collections import Counter

import pytest

from kiln_billing.ledger import (
    Balances,
    Book,
    Booking,
    JobCharge,
    LedgerError,
    Posting,
    apply_postings,
    balances_from_books,
    booked_grant,
    decide_end,
    decide_submission,
    end_of,
    grant_booking,
    job_price,
    transfer,
)
from kiln_runtime.catalog import load_catalog


def test_every_booking_balances_and_an_unbalanced_one_is_refused() -> None:
    for booking in (
        grant_booking("g", 10_000, 0),
        grant_booking("g", -3_000, 10_000),
        decide_submission("j", None, available=9_000, price=5_000, sandbox=False).booking,
        decide_end("j", JobCharge("reserved", 5_000, False), "completed", sandbox=False).booking,
        decide_end("j", JobCharge("reserved", 5_000, False), "failed", sandbox=False).booking,
    ):
        assert booking is not None
        assert sum(p.amount for p in booking.postings) == 0
        assert len(booking.postings) == 2
    with pytest.raises(LedgerError):
        Booking("grant", "grant:x", 5, (Posting(Book.AVAILABLE, 5),))
    with pytest.raises(LedgerError):
        transfer(Book.AVAILABLE, Book.RESERVED, -1)
    assert transfer(Book.AVAILABLE, Book.RESERVED, 0) == ()


def test_balances_follow_the_postings_and_never_go_below_zero() -> None:
    b = apply_postings(Balances.zero(), grant_booking("g", 10_000, 0).postings)
    assert b == Balances(granted=10_000, available=10_000, reserved=0, spent=0)
    b = apply_postings(b, transfer(Book.AVAILABLE, Book.RESERVED, 7_000))
    b = apply_postings(b, transfer(Book.RESERVED, Book.SPENT, 5_000))
    b = apply_postings(b, transfer(Book.RESERVED, Book.AVAILABLE, 2_000))
    assert b == Balances(granted=10_000, available=5_000, reserved=0, spent=5_000)
    assert b.conserved
    with pytest.raises(LedgerError):
        apply_postings(b, transfer(Book.AVAILABLE, Book.RESERVED, 5_001))
    books = {"system.grants": -10_000, "available": 5_000, "spent": 5_000}
    assert balances_from_books(books) == b


def test_reserves_only_when_the_whole_price_is_available() -> None:
    held = decide_submission("j", None, available=5_000, price=5_000, sandbox=False)
    assert (held.emit, held.charge) == ("reserved", JobCharge("reserved", 5_000, False))
    assert held.booking is not None and held.booking.entry_key == "reserve:j"
    short = decide_submission("j", None, available=4_999, price=5_000, sandbox=False)
    assert (short.emit, short.booking) == ("rejected", None)
    unknown = decide_submission("j", None, available=99_000, price=None, sandbox=False)
    assert unknown.emit == "rejected"


def test_sandbox_jobs_cost_nothing_and_book_nothing() -> None:
    assert job_price(5_000, sandbox=True) == 0
    assert job_price(5_000, sandbox=False) == 5_000
    held = decide_submission("j", None, available=0, price=0, sandbox=True)
    assert held.emit == "reserved" and held.booking is None
    assert held.charge == JobCharge("reserved", 0, True)
    done = decide_end("j", held.charge, "completed", sandbox=True)
    assert done.emit == "captured" and done.booking is None


def test_a_revocation_never_takes_the_balance_below_zero() -> None:
    booking = grant_booking("g", -5_000, 3_000)
    assert (booking.kind, booking.amount, booked_grant(booking)) == ("revoke", 3_000, -3_000)
    after = apply_postings(Balances(3_000, 3_000, 0, 0), booking.postings)
    assert after == Balances(0, 0, 0, 0)
    nothing = grant_booking("g", -5_000, 0)
    assert nothing.postings == () and booked_grant(nothing) == 0


def test_a_reservation_settles_once_and_never_both_ways() -> None:
    held = JobCharge("reserved", 5_000, False)
    captured = decide_end("j", held, "completed", sandbox=False)
    released = decide_end("j", held, "canceled", sandbox=False)
    assert captured.booking is not None and released.booking is not None
    assert captured.booking.entry_key == released.booking.entry_key == "settle:j"
    for final in ("captured", "released", "rejected", "void", "unpaid"):
        for end in ("completed", "failed", "canceled"):
            assert not decide_end("j", JobCharge(final, 5_000, False), end, sandbox=False).changes


def test_catalog_prices_are_integer_millicredits_and_sandbox_is_free() -> None:
    catalog = load_catalog()
    assert catalog.price_millicredits("kiln/prompt-to-image", {}, sandbox=False) == 5_000
    assert catalog.price_millicredits("kiln/text-to-speech", {}, sandbox=False) == 2_000
    assert catalog.price_millicredits("kiln/prompt-to-image", {}, sandbox=True) == 0
    with pytest.raises(KeyError):
        catalog.price_millicredits("kiln/nope", {}, sandbox=False)


def test_end_of_names_the_three_ends() -> None:
    assert [end_of(f"job.{e}") for e in ("completed", "failed", "canceled")] == [
        "completed",
        "failed",
        "canceled",
    ]
    with pytest.raises(ValueError):
        end_of("job.started")


# --------------------------------------------------------------------------------------------
# Exhaustive orders, pure: a job's events twice over, in every order.


class Ledger:
    """A minimal in-memory ledger that applies decisions the way the handlers do, with the
    database's uniqueness of entry keys."""

    def __init__(self, available: int) -> None:
        self.balances = apply_postings(Balances.zero(), grant_booking("g", available, 0).postings)
        self.charge: JobCharge | None = None
        self.keys: set[str] = set()
        self.kinds: Counter[str] = Counter()
        self.emitted: list[str] = []

    def submit(self, price: int) -> None:
        d = decide_submission(
            "j", self.charge, available=self.balances.available, price=price, sandbox=False
        )
        self._apply(d.charge, d.booking, d.emit)

    def end(self, end: str) -> None:
        d = decide_end("j", self.charge, end_of(end), sandbox=False)
        self._apply(d.charge, d.booking, d.emit)

    def _apply(self, charge: JobCharge | None, booking: Booking | None, emit: str | None) -> None:
        if charge is None:
            assert booking is None and emit is None
            return
        if booking is not None:
            assert booking.entry_key not in self.keys, f"{booking.entry_key} booked twice"
            self.keys.add(booking.entry_key)
            self.kinds[booking.kind] += 1
            self.balances = apply_postings(self.balances, booking.postings)
        self.charge = charge
        if emit:
            self.emitted.append(emit)


ORDERS = sorted(
    set(
        itertools.permutations(
            [
                "submit",
                "submit",
                "job.completed",
                "job.completed",
                "job.failed",
                "job.failed",
                "job.canceled",
            ]
        )
    )
)


@pytest.mark.parametrize("available", [0, 4_999, 5_000, 20_000])
def test_every_order_of_duplicated_events_charges_at_most_once(available: int) -> None:
    assert len(ORDERS) == 630
    for order in ORDERS:
        ledger = Ledger(available)
        for step in order:
            if step == "submit":
                ledger.submit(5_000)
            else:
                ledger.end(step)
        kinds = ledger.kinds
        charged = kinds["capture"] + kinds["charge"]
        assert charged <= 1 and kinds["release"] <= 1 and charged + kinds["release"] <= 1, order
        assert kinds["reserve"] <= 1
        assert ledger.balances.conserved and ledger.balances.reserved == 0
        assert ledger.charge is not None and ledger.charge.final, order
        first_end = next(s for s in order if s != "submit")
        submitted_first = order[0] == "submit"
        if charged:
            assert first_end == "job.completed" and available >= 5_000
            assert ledger.balances.spent == 5_000
        elif submitted_first and available >= 5_000:
            assert first_end != "job.completed" and kinds["release"] == 1
        if submitted_first:
            assert ledger.emitted[0] in ("reserved", "rejected")
        else:
            assert "reserved" not in ledger.emitted and "rejected" not in ledger.emitted
