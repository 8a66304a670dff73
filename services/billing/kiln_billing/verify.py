"""Checking the ledger: `kiln-billing-verify [DATABASE_URL] [--json]`, or from Python
`verify_ledger(database_url) -> LedgerReport` (`kiln-admin billing verify` calls it).

Read-only. It checks that
- every booking's postings sum to zero, and carry their booking's account;
- no customer book is below zero, and for every account granted = available + reserved + spent;
- the balance cache equals what the postings add up to;
- every job's state agrees with its bookings: a held job has one reservation and no
  settlement, a captured job a reservation and one capture (or one charge), a released job a
  reservation and one release, a rejected, void, unpaid or sandbox job no booking at all;
- each account's `reserved` book is the sum of its held jobs' amounts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Connection, text

from kiln_billing import repository
from kiln_billing.ledger import Balances, balances_from_books
from kiln_billing.migrate import current_revision, head_revision
from kiln_runtime.db import make_sync_engine
from kiln_runtime.money import format_credits

# The bookings a job in each state has, by kind (sandbox and zero-price jobs have none).
EXPECTED_BOOKINGS: dict[str, tuple[Counter[str], ...]] = {
    "reserved": (Counter({"reserve": 1}),),
    "captured": (Counter({"reserve": 1, "capture": 1}), Counter({"charge": 1})),
    "released": (Counter({"reserve": 1, "release": 1}),),
    "rejected": (Counter(),),
    "ended": (Counter(),),
    "void": (Counter(),),
    "unpaid": (Counter(),),
}
MAX_PROBLEMS_LISTED = 200


@dataclass
class AccountReport:
    account_id: str
    granted: int
    available: int
    reserved: int
    spent: int


@dataclass
class LedgerReport:
    ok: bool
    accounts: int
    bookings: int
    postings: int
    # Over every account, from the postings: granted, available, reserved, spent.
    totals: dict[str, int]
    # Jobs by mode ("live" / "sandbox") and state: sandbox jobs are counted apart.
    jobs: dict[str, dict[str, int]]
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0
    account_reports: list[AccountReport] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def render(self) -> str:
        lines = [
            f"ledger: {'OK' if self.ok else 'PROBLEMS FOUND'} — {self.accounts} accounts, "
            f"{self.bookings} bookings, {self.postings} postings",
            "totals (credits): "
            + ", ".join(f"{name} {format_credits(v)}" for name, v in self.totals.items()),
        ]
        for job_mode in ("live", "sandbox"):
            counts = self.jobs.get(job_mode, {})
            shown = ", ".join(f"{status} {n}" for status, n in sorted(counts.items())) or "none"
            lines.append(f"{job_mode} jobs: {shown}")
        if self.problems:
            lines.append(f"{self.problem_count} problems:")
            lines += [f"  - {p}" for p in self.problems]
            if self.problem_count > len(self.problems):
                lines.append(f"  ... and {self.problem_count - len(self.problems)} more")
        return "\n".join(lines)


class _Problems:
    def __init__(self) -> None:
        self.listed: list[str] = []
        self.count = 0

    def add(self, problem: str) -> None:
        self.count += 1
        if len(self.listed) < MAX_PROBLEMS_LISTED:
            self.listed.append(problem)


def _check_account(
    problems: _Problems, account_id: str, derived: Balances, cached: Balances | None
) -> None:
    for name in ("available", "reserved", "spent"):
        if getattr(derived, name) < 0:
            problems.add(f"{account_id}: {name} is below zero ({getattr(derived, name)})")
    if not derived.conserved:
        problems.add(
            f"{account_id}: granted {derived.granted} != available {derived.available} + "
            f"reserved {derived.reserved} + spent {derived.spent}"
        )
    if cached is None:
        if derived != Balances.zero():
            problems.add(f"{account_id}: has postings but no cached balance")
    elif cached != derived:
        problems.add(f"{account_id}: cached balance {cached} != postings {derived}")


def check_ledger_connection(connection: Connection) -> LedgerReport:
    problems = _Problems()
    for key, total in repository.unbalanced_transactions(connection):
        problems.add(f"booking {key} does not balance (its postings sum to {total})")
    orphans = repository.orphan_postings(connection)
    if orphans:
        problems.add(f"{orphans} postings carry another account than their booking's")

    books = repository.postings_by_account_and_book(connection)
    cached = repository.cached_balances(connection)
    reports: list[AccountReport] = []
    totals = Balances.zero()
    for account_id in sorted(set(books) | set(cached)):
        derived = balances_from_books(books.get(account_id, {}))
        _check_account(problems, account_id, derived, cached.get(account_id))
        reports.append(
            AccountReport(
                account_id, derived.granted, derived.available, derived.reserved, derived.spent
            )
        )
        totals = Balances(
            totals.granted + derived.granted,
            totals.available + derived.available,
            totals.reserved + derived.reserved,
            totals.spent + derived.spent,
        )

    bookings_by_job: dict[str, Counter[str]] = defaultdict(Counter)
    booked_amounts: dict[str, set[int]] = defaultdict(set)
    booking_accounts: dict[str, str] = {}
    for booking in repository.job_bookings(connection):
        bookings_by_job[booking.job_id][booking.kind] += 1
        booked_amounts[booking.job_id].add(booking.amount)
        booking_accounts[booking.job_id] = booking.account_id
    held_by_account: dict[str, int] = defaultdict(int)
    jobs: dict[str, dict[str, int]] = {"live": {}, "sandbox": {}}
    seen: set[str] = set()
    for row in repository.all_job_charges(connection):
        charge = row.charge
        seen.add(row.job_id)
        job_mode = "sandbox" if charge.sandbox else "live"
        jobs[job_mode][charge.status] = jobs[job_mode].get(charge.status, 0) + 1
        found = bookings_by_job.get(row.job_id, Counter())
        expected = EXPECTED_BOOKINGS.get(charge.status)
        if expected is None:
            problems.add(f"job {row.job_id}: unknown state {charge.status!r}")
            continue
        if charge.sandbox and charge.amount != 0:
            problems.add(f"job {row.job_id}: a sandbox job holds {charge.amount} millicredits")
        if charge.amount == 0:
            expected = (Counter(),)
        if found not in expected:
            problems.add(
                f"job {row.job_id} ({charge.status}, {charge.amount} millicredits): "
                f"bookings {dict(found)}, expected one of {[dict(e) for e in expected]}"
            )
        if found and booked_amounts[row.job_id] != {charge.amount}:
            problems.add(
                f"job {row.job_id}: booked {sorted(booked_amounts[row.job_id])}, "
                f"holds {charge.amount}"
            )
        if found and booking_accounts[row.job_id] != row.account_id:
            problems.add(f"job {row.job_id}: booked on another account than its own")
        if charge.status == "reserved":
            held_by_account[row.account_id] += charge.amount
    for job_id in sorted(set(bookings_by_job) - seen):
        problems.add(f"job {job_id}: bookings {dict(bookings_by_job[job_id])} but no job state")
    for report in reports:
        if report.reserved != held_by_account.get(report.account_id, 0):
            problems.add(
                f"{report.account_id}: reserved {report.reserved} != the held jobs' "
                f"{held_by_account.get(report.account_id, 0)}"
            )

    booking_count, posting_count = repository.ledger_counts(connection)
    return LedgerReport(
        ok=problems.count == 0,
        accounts=len(reports),
        bookings=booking_count,
        postings=posting_count,
        totals={
            "granted": totals.granted,
            "available": totals.available,
            "reserved": totals.reserved,
            "spent": totals.spent,
        },
        jobs={m: dict(sorted(c.items())) for m, c in jobs.items()},
        problems=problems.listed,
        problem_count=problems.count,
        account_reports=reports,
    )


def check_ledger(connection: Connection) -> LedgerReport:
    """Check the ledger in one read-only snapshot, even while billing writes (PostgreSQL:
    REPEATABLE READ; SQLite: one read transaction of the WAL)."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
    try:
        return check_ledger_connection(connection)
    finally:
        connection.rollback()


class LedgerUnreadable(RuntimeError):
    """The database is not a billing ledger at the current schema."""


def _verify(database_url: str) -> LedgerReport:
    engine = make_sync_engine(database_url)
    try:
        with engine.connect() as connection:
            revision, head = current_revision(connection), head_revision()
            connection.rollback()
            if revision != head:
                raise LedgerUnreadable(
                    f"the database is at schema revision {revision or 'none'}, not {head}: "
                    "start billing once (it migrates its database when it starts)"
                )
            connection.begin()
            return check_ledger(connection)
    finally:
        engine.dispose()


async def verify_ledger_async(database_url: str) -> LedgerReport:
    return await asyncio.to_thread(_verify, database_url)


def verify_ledger(database_url: str) -> LedgerReport:
    """Check billing's ledger at `database_url` (read-only); callable from any thread."""
    return _verify(database_url)


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 when the ledger is sound, 1 when it found problems, 2 when it could not run."""
    parser = argparse.ArgumentParser(
        prog="kiln-billing-verify",
        description="Check billing's double-entry ledger against its balances and jobs.",
    )
    parser.add_argument(
        "database_url",
        nargs="?",
        help="billing's database (default: KILN_DATABASE_URL, else billing's local SQLite file)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--accounts", action="store_true", help="list every account's books as well"
    )
    args = parser.parse_args(argv)
    url = args.database_url
    if not url:
        from kiln_billing.config import BillingSettings

        url = BillingSettings().database_url
    try:
        report = verify_ledger(url)
    except Exception as exc:
        print(f"kiln-billing-verify: cannot read {url}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        data = report.to_json()
        if not args.accounts:
            data.pop("account_reports")
        print(json.dumps(data, indent=2))
    else:
        print(report.render())
        if args.accounts:
            for a in report.account_reports:
                print(
                    f"  {a.account_id}: granted {format_credits(a.granted)}, "
                    f"available {format_credits(a.available)}, "
                    f"reserved {format_credits(a.reserved)}, spent {format_credits(a.spent)}"
                )
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
