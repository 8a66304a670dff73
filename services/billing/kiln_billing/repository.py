"""All of billing's SQL, on a synchronous connection (the event runtime's transaction)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import Connection, Table, bindparam, func, insert, select, update

from kiln_billing.ledger import Balances, Booking, JobCharge
from kiln_billing.tables import AccountBalance, LedgerPosting, LedgerTransaction, Reservation
from kiln_runtime.db import upsert_insert

balances_table = cast(Table, AccountBalance.__table__)
postings_table = cast(Table, LedgerPosting.__table__)
transactions_table = cast(Table, LedgerTransaction.__table__)
reservations_table = cast(Table, Reservation.__table__)

# Built once (constructing a statement costs more than running it).
_SAVE_BALANCES = (
    update(balances_table)
    .where(balances_table.c.account_id == bindparam("b_account"))
    .values(
        granted_millicredits=bindparam("granted"),
        available_millicredits=bindparam("available"),
        reserved_millicredits=bindparam("reserved"),
        spent_millicredits=bindparam("spent"),
        version=balances_table.c.version + 1,
    )
    .returning(balances_table.c.version)
)
_ADD_TRANSACTION = (
    insert(transactions_table)
    .values(
        account_id=bindparam("account_id"),
        kind=bindparam("kind"),
        entry_key=bindparam("entry_key"),
        job_id=bindparam("job_id"),
        grant_id=bindparam("grant_id"),
        amount_millicredits=bindparam("amount"),
        created_at=bindparam("now"),
    )
    .returning(transactions_table.c.id)
)
_ADD_POSTINGS = insert(postings_table)
_BOOKING_EXISTS = select(transactions_table.c.id).where(
    transactions_table.c.entry_key == bindparam("entry_key")
)
_UPDATE_CHARGE = (
    update(reservations_table)
    .where(reservations_table.c.job_id == bindparam("r_job"))
    .values(
        status=bindparam("status"),
        amount_millicredits=bindparam("amount"),
        sandbox=bindparam("sandbox"),
        ended_with=bindparam("ended_with"),
        settled_at=bindparam("settled_at"),
    )
)
_INSERT_CHARGE = insert(reservations_table)
_CHARGES = select(reservations_table).where(
    reservations_table.c.job_id.in_(bindparam("job_ids", expanding=True))
)
_BALANCES = select(balances_table).where(
    balances_table.c.account_id.in_(bindparam("accounts", expanding=True))
)
# PostgreSQL locks the rows, in one order, so that two transactions locking accounts never
# deadlock (on SQLite the writer holds the database's write lock from BEGIN IMMEDIATE).
_BALANCES_FOR_UPDATE = _BALANCES.order_by(balances_table.c.account_id).with_for_update()
_NEW_BALANCES = {
    dialect: upsert_insert(dialect)(balances_table).on_conflict_do_nothing(
        index_elements=["account_id"]
    )
    for dialect in ("sqlite", "postgresql")
}


# ------------------------------------------------------------------------------ balances


def _balances(row: object) -> Balances:
    return Balances(
        int(row.granted_millicredits),  # type: ignore[attr-defined]
        int(row.available_millicredits),  # type: ignore[attr-defined]
        int(row.reserved_millicredits),  # type: ignore[attr-defined]
        int(row.spent_millicredits),  # type: ignore[attr-defined]
    )


def lock_balances(
    connection: Connection, account_ids: Iterable[str]
) -> dict[str, tuple[Balances, int]]:
    """The accounts' cached balances and their versions, their rows made when missing and
    locked until the transaction ends (PostgreSQL: `FOR UPDATE`; SQLite: the writer holds the
    database's write lock from BEGIN IMMEDIATE), so two decisions for one account never read
    the same balance."""
    wanted = sorted(set(account_ids))
    if not wanted:
        return {}
    dialect = connection.dialect.name
    connection.execute(
        _NEW_BALANCES[dialect],
        [
            {
                "account_id": a,
                "granted_millicredits": 0,
                "available_millicredits": 0,
                "reserved_millicredits": 0,
                "spent_millicredits": 0,
            }
            for a in wanted
        ],
    )
    query = _BALANCES_FOR_UPDATE if dialect == "postgresql" else _BALANCES
    rows = connection.execute(query, {"accounts": wanted})
    return {row.account_id: (_balances(row), int(row.version)) for row in rows}


def save_balances(connection: Connection, account_id: str, balances: Balances) -> int:
    """Write the account's new balances (its row is locked by `lock_balances`); returns the
    row's new version."""
    return int(
        connection.execute(
            _SAVE_BALANCES,
            {
                "b_account": account_id,
                "granted": balances.granted,
                "available": balances.available,
                "reserved": balances.reserved,
                "spent": balances.spent,
            },
        ).scalar_one()
    )


def cached_balances(connection: Connection) -> dict[str, Balances]:
    return {row.account_id: _balances(row) for row in connection.execute(select(balances_table))}


def cached_totals(connection: Connection) -> Balances:
    """The sum of every account's cached balances (cheap: one row per account)."""
    b = balances_table.c
    row = connection.execute(
        select(
            func.coalesce(func.sum(b.granted_millicredits), 0),
            func.coalesce(func.sum(b.available_millicredits), 0),
            func.coalesce(func.sum(b.reserved_millicredits), 0),
            func.coalesce(func.sum(b.spent_millicredits), 0),
        )
    ).one()
    return Balances(int(row[0]), int(row[1]), int(row[2]), int(row[3]))


# ------------------------------------------------------------------------------ the ledger


def add_booking(
    connection: Connection,
    account_id: str,
    booking: Booking,
    *,
    now: datetime,
    job_id: str | None = None,
    grant_id: str | None = None,
) -> None:
    """Append one booking and its postings."""
    transaction_id = connection.execute(
        _ADD_TRANSACTION,
        {
            "account_id": account_id,
            "kind": booking.kind,
            "entry_key": booking.entry_key,
            "job_id": job_id,
            "grant_id": grant_id,
            "amount": booking.amount,
            "now": now,
        },
    ).scalar_one()
    if booking.postings:
        connection.execute(
            _ADD_POSTINGS,
            [
                {
                    "transaction_id": transaction_id,
                    "account_id": account_id,
                    "book": str(p.book),
                    "amount_millicredits": p.amount,
                }
                for p in booking.postings
            ],
        )


def booking_exists(connection: Connection, entry_key: str) -> bool:
    return connection.execute(_BOOKING_EXISTS, {"entry_key": entry_key}).first() is not None


def postings_by_account_and_book(connection: Connection) -> dict[str, dict[str, int]]:
    p = postings_table.c
    rows = connection.execute(
        select(p.account_id, p.book, func.sum(p.amount_millicredits)).group_by(p.account_id, p.book)
    )
    books: dict[str, dict[str, int]] = defaultdict(dict)
    for account_id, book, total in rows:
        books[account_id][book] = int(total)
    return dict(books)


def unbalanced_transactions(connection: Connection) -> list[tuple[str, int]]:
    """(entry_key, sum of its postings) of every booking whose postings do not sum to zero,
    or that moved an amount without any posting."""
    p, t = postings_table.c, transactions_table.c
    sums = (
        select(
            p.transaction_id.label("transaction_id"),
            func.sum(p.amount_millicredits).label("total"),
            func.count().label("legs"),
        )
        .group_by(p.transaction_id)
        .subquery()
    )
    rows = connection.execute(
        select(
            t.entry_key,
            func.coalesce(sums.c.total, 0),
            func.coalesce(sums.c.legs, 0),
            t.amount_millicredits,
        )
        .outerjoin(sums, sums.c.transaction_id == t.id)
        .where(
            (func.coalesce(sums.c.total, 0) != 0)
            | ((func.coalesce(sums.c.legs, 0) == 0) & (t.amount_millicredits != 0))
        )
    )
    return [(key, int(total)) for key, total, _legs, _amount in rows]


def orphan_postings(connection: Connection) -> int:
    """Postings whose account differs from their booking's."""
    p, t = postings_table.c, transactions_table.c
    count = connection.execute(
        select(func.count())
        .select_from(postings_table.join(transactions_table, t.id == p.transaction_id))
        .where(p.account_id != t.account_id)
    ).scalar()
    return int(count or 0)


@dataclass(frozen=True)
class JobBooking:
    job_id: str
    account_id: str
    kind: str
    amount: int


def job_bookings(connection: Connection) -> list[JobBooking]:
    t = transactions_table.c
    rows = connection.execute(
        select(t.job_id, t.account_id, t.kind, t.amount_millicredits).where(t.job_id.is_not(None))
    )
    return [JobBooking(str(j), a, k, int(m)) for j, a, k, m in rows]


def ledger_counts(connection: Connection) -> tuple[int, int]:
    """(bookings, postings)."""
    bookings = connection.execute(select(func.count()).select_from(transactions_table)).scalar()
    postings = connection.execute(select(func.count()).select_from(postings_table)).scalar()
    return int(bookings or 0), int(postings or 0)


# ------------------------------------------------------------------------------ job charges


def _charge(row: object) -> JobCharge:
    return JobCharge(
        status=row.status,  # type: ignore[attr-defined]
        amount=int(row.amount_millicredits),  # type: ignore[attr-defined]
        sandbox=bool(row.sandbox),  # type: ignore[attr-defined]
        ended_with=row.ended_with,  # type: ignore[attr-defined]
    )


def job_charges(connection: Connection, job_ids: Iterable[str]) -> dict[str, tuple[str, JobCharge]]:
    """(account id, charge) of the jobs billing has heard of, by job id."""
    wanted = sorted(set(job_ids))
    if not wanted:
        return {}
    rows = connection.execute(_CHARGES, {"job_ids": wanted})
    return {row.job_id: (row.account_id, _charge(row)) for row in rows}


def save_job_charge(
    connection: Connection,
    job_id: str,
    account_id: str,
    charge: JobCharge,
    *,
    known: bool,
    now: datetime,
) -> None:
    """Record the job's new state; `known` says whether billing had a row for it already."""
    values = {
        "status": charge.status,
        "amount": charge.amount,
        "sandbox": charge.sandbox,
        "ended_with": charge.ended_with,
        "settled_at": now if charge.final else None,
    }
    if known:
        connection.execute(_UPDATE_CHARGE, {"r_job": job_id, **values})
    else:
        connection.execute(
            _INSERT_CHARGE,
            {
                "job_id": job_id,
                "account_id": account_id,
                "created_at": now,
                "status": charge.status,
                "amount_millicredits": charge.amount,
                "sandbox": charge.sandbox,
                "ended_with": charge.ended_with,
                "settled_at": values["settled_at"],
            },
        )


@dataclass(frozen=True)
class ChargeRow:
    job_id: str
    account_id: str
    charge: JobCharge


def all_job_charges(connection: Connection) -> list[ChargeRow]:
    rows = connection.execute(select(reservations_table))
    return [ChargeRow(r.job_id, r.account_id, _charge(r)) for r in rows]


def job_counts(connection: Connection) -> dict[tuple[bool, str], int]:
    """Jobs by (sandbox, status)."""
    r = reservations_table.c
    rows = connection.execute(
        select(r.sandbox, r.status, func.count()).group_by(r.sandbox, r.status)
    )
    return {(bool(sandbox), status): int(n) for sandbox, status, n in rows}
