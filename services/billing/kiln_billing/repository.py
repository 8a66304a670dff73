"""All of billing's SQL."""

from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from kiln_billing.models import AccountBalance, LedgerPosting, LedgerTransaction, Reservation
from kiln_billing.service import Balances, Booking, JobCharge
from kiln_runtime.messaging import utcnow

# ------------------------------------------------------------------------------ snapshots


async def begin_snapshot(session: AsyncSession) -> None:
    """Make every later read of `session`'s transaction see one snapshot of the database
    (PostgreSQL: REPEATABLE READ; SQLite: an explicit BEGIN, since its driver starts none
    before reads), so that a check never mixes states while billing writes."""
    if session.get_bind().dialect.name == "postgresql":
        await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    else:
        await session.execute(text("BEGIN"))


# ------------------------------------------------------------------------------ balances


def _balances(row: AccountBalance) -> Balances:
    return Balances(
        row.granted_millicredits,
        row.available_millicredits,
        row.reserved_millicredits,
        row.spent_millicredits,
    )


async def lock_balances(session: AsyncSession, account_id: str) -> Balances:
    """The account's cached balances, its row locked until the transaction ends (PostgreSQL:
    `FOR UPDATE`; SQLite holds the database's write lock from the inbox insert on), so two
    decisions for one account never read the same balance. Creates the row when missing."""
    row = await session.get(AccountBalance, account_id, with_for_update=True)
    if row is None:
        insert = (
            postgresql_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
        )
        await session.execute(
            insert(AccountBalance)
            .values(
                account_id=account_id,
                granted_millicredits=0,
                available_millicredits=0,
                reserved_millicredits=0,
                spent_millicredits=0,
            )
            .on_conflict_do_nothing(index_elements=["account_id"])
        )
        row = await session.get(
            AccountBalance, account_id, with_for_update=True, populate_existing=True
        )
        assert row is not None
    return _balances(row)


async def save_balances(session: AsyncSession, account_id: str, balances: Balances) -> None:
    """Write the account's new balances (its row is locked by `lock_balances`)."""
    await session.execute(
        update(AccountBalance)
        .where(AccountBalance.account_id == account_id)
        .values(
            granted_millicredits=balances.granted,
            available_millicredits=balances.available,
            reserved_millicredits=balances.reserved,
            spent_millicredits=balances.spent,
        )
        .execution_options(synchronize_session=False)
    )


async def cached_balances(session: AsyncSession) -> dict[str, Balances]:
    rows = (await session.scalars(select(AccountBalance))).all()
    return {row.account_id: _balances(row) for row in rows}


async def cached_totals(session: AsyncSession) -> Balances:
    """The sum of every account's cached balances (cheap: one row per account)."""
    row = (
        await session.execute(
            select(
                func.coalesce(func.sum(AccountBalance.granted_millicredits), 0),
                func.coalesce(func.sum(AccountBalance.available_millicredits), 0),
                func.coalesce(func.sum(AccountBalance.reserved_millicredits), 0),
                func.coalesce(func.sum(AccountBalance.spent_millicredits), 0),
            )
        )
    ).one()
    return Balances(int(row[0]), int(row[1]), int(row[2]), int(row[3]))


# ------------------------------------------------------------------------------ the ledger


async def add_booking(
    session: AsyncSession,
    account_id: str,
    booking: Booking,
    *,
    job_id: str | None = None,
    grant_id: str | None = None,
) -> None:
    """Append one booking and its postings."""
    transaction_id = (
        await session.execute(
            insert(LedgerTransaction)
            .values(
                account_id=account_id,
                kind=booking.kind,
                entry_key=booking.entry_key,
                job_id=job_id,
                grant_id=grant_id,
                amount_millicredits=booking.amount,
                created_at=utcnow(),
            )
            .returning(LedgerTransaction.id)
        )
    ).scalar_one()
    if booking.postings:
        await session.execute(
            insert(LedgerPosting),
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


async def booking_exists(session: AsyncSession, entry_key: str) -> bool:
    found = await session.scalar(
        select(LedgerTransaction.id).where(LedgerTransaction.entry_key == entry_key)
    )
    return found is not None


async def postings_by_account_and_book(session: AsyncSession) -> dict[str, dict[str, int]]:
    rows = await session.execute(
        select(
            LedgerPosting.account_id,
            LedgerPosting.book,
            func.sum(LedgerPosting.amount_millicredits),
        ).group_by(LedgerPosting.account_id, LedgerPosting.book)
    )
    books: dict[str, dict[str, int]] = defaultdict(dict)
    for account_id, book, total in rows:
        books[account_id][book] = int(total)
    return dict(books)


async def unbalanced_transactions(session: AsyncSession) -> list[tuple[str, int]]:
    """(entry_key, sum of its postings) of every booking whose postings do not sum to zero,
    or that moved an amount without any posting."""
    sums = (
        select(
            LedgerPosting.transaction_id.label("transaction_id"),
            func.sum(LedgerPosting.amount_millicredits).label("total"),
            func.count().label("legs"),
        )
        .group_by(LedgerPosting.transaction_id)
        .subquery()
    )
    rows = await session.execute(
        select(
            LedgerTransaction.entry_key,
            func.coalesce(sums.c.total, 0),
            func.coalesce(sums.c.legs, 0),
            LedgerTransaction.amount_millicredits,
        )
        .outerjoin(sums, sums.c.transaction_id == LedgerTransaction.id)
        .where(
            (func.coalesce(sums.c.total, 0) != 0)
            | ((func.coalesce(sums.c.legs, 0) == 0) & (LedgerTransaction.amount_millicredits != 0))
        )
    )
    return [(key, int(total)) for key, total, _legs, _amount in rows]


async def orphan_postings(session: AsyncSession) -> int:
    """Postings whose account differs from their booking's."""
    count = await session.scalar(
        select(func.count())
        .select_from(LedgerPosting)
        .join(LedgerTransaction, LedgerTransaction.id == LedgerPosting.transaction_id)
        .where(LedgerPosting.account_id != LedgerTransaction.account_id)
    )
    return int(count or 0)


@dataclass(frozen=True)
class JobBooking:
    job_id: str
    account_id: str
    kind: str
    amount: int


async def job_bookings(session: AsyncSession) -> list[JobBooking]:
    rows = await session.execute(
        select(
            LedgerTransaction.job_id,
            LedgerTransaction.account_id,
            LedgerTransaction.kind,
            LedgerTransaction.amount_millicredits,
        ).where(LedgerTransaction.job_id.is_not(None))
    )
    return [JobBooking(str(j), a, k, int(m)) for j, a, k, m in rows]


async def ledger_counts(session: AsyncSession) -> tuple[int, int]:
    """(bookings, postings)."""
    bookings = await session.scalar(select(func.count()).select_from(LedgerTransaction))
    postings = await session.scalar(select(func.count()).select_from(LedgerPosting))
    return int(bookings or 0), int(postings or 0)


# ------------------------------------------------------------------------------ job charges


def _charge(row: Reservation) -> JobCharge:
    return JobCharge(
        status=row.status,  # type: ignore[arg-type]
        amount=row.amount_millicredits,
        sandbox=row.sandbox,
        ended_with=row.ended_with,  # type: ignore[arg-type]
    )


async def job_charge(session: AsyncSession, job_id: str) -> tuple[str, JobCharge] | None:
    """(account id, charge) of a job billing has heard of, or None."""
    row = await session.get(Reservation, job_id)
    if row is None:
        return None
    return row.account_id, _charge(row)


async def save_job_charge(
    session: AsyncSession, job_id: str, account_id: str, charge: JobCharge, *, known: bool
) -> None:
    """Record the job's new state; `known` says whether billing had a row for it already."""
    now = utcnow()
    values = {
        "status": charge.status,
        "amount_millicredits": charge.amount,
        "sandbox": charge.sandbox,
        "ended_with": charge.ended_with,
        "settled_at": now if charge.final else None,
    }
    if known:
        await session.execute(
            update(Reservation)
            .where(Reservation.job_id == job_id)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
    else:
        await session.execute(
            insert(Reservation).values(
                job_id=job_id, account_id=account_id, created_at=now, **values
            )
        )


@dataclass(frozen=True)
class ChargeRow:
    job_id: str
    account_id: str
    charge: JobCharge


async def all_job_charges(session: AsyncSession) -> list[ChargeRow]:
    rows = (await session.scalars(select(Reservation))).all()
    return [ChargeRow(r.job_id, r.account_id, _charge(r)) for r in rows]


async def job_counts(session: AsyncSession) -> dict[tuple[bool, str], int]:
    """Jobs by (sandbox, status)."""
    rows = await session.execute(
        select(Reservation.sandbox, Reservation.status, func.count()).group_by(
            Reservation.sandbox, Reservation.status
        )
    )
    return {(bool(sandbox), status): int(n) for sandbox, status, n in rows}
