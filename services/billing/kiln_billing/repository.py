"""All of billing's SQL."""

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from kiln_billing.models import AccountBalance, LedgerEntry, Reservation
from kiln_billing.service import Balances


async def balances_for(session: AsyncSession, account_id: str) -> Balances:
    row = await session.get(AccountBalance, account_id)
    if row is None:
        return Balances(0, 0, 0, 0)
    return Balances(
        row.granted_millicredits,
        row.available_millicredits,
        row.reserved_millicredits,
        row.captured_millicredits,
    )


async def save_balances(session: AsyncSession, account_id: str, b: Balances) -> None:
    row = await session.get(AccountBalance, account_id)
    if row is None:
        row = AccountBalance(account_id=account_id)
        session.add(row)
    row.granted_millicredits = b.granted
    row.available_millicredits = b.available
    row.reserved_millicredits = b.reserved
    row.captured_millicredits = b.captured


async def entry_exists(session: AsyncSession, account_id: str, entry_key: str) -> bool:
    found = await session.scalar(
        select(LedgerEntry.id).where(
            LedgerEntry.account_id == account_id, LedgerEntry.entry_key == entry_key
        )
    )
    return found is not None


def add_entry(
    session: AsyncSession,
    *,
    account_id: str,
    entry_key: str,
    kind: str,
    amount: int,
    job_id: str | None = None,
    sandbox: bool = False,
) -> None:
    session.add(
        LedgerEntry(
            account_id=account_id,
            entry_key=entry_key,
            kind=kind,
            amount_millicredits=amount,
            job_id=job_id,
            sandbox=sandbox,
        )
    )


async def reservation_for(session: AsyncSession, job_id: str) -> Reservation | None:
    return await session.get(Reservation, job_id)
