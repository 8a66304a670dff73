"""All SQL of the operator routes: accounts, credit grants and the balance billing announced."""

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from kiln_contracts.v1 import credits_pb2
from kiln_gateway.tables import MESSAGING, Account, Balance, Grant
from kiln_gateway.webhooks.service import default_endpoint_changed
from kiln_runtime.outbox import Outbox

LIST_LIMIT = 100


async def email_taken(session: AsyncSession, email: str) -> bool:
    return await session.scalar(select(Account.id).where(Account.email == email)) is not None


async def add_account(session: AsyncSession, account: Account) -> None:
    """The account, and its default webhook secret (sealed) announced to the notifier."""
    session.add(account)
    outbox = Outbox()
    outbox.emit(
        "webhooks.endpoint_changed",
        default_endpoint_changed(account.id, account.sealed_webhook_secret or ""),
        account_id=account.id,
    )
    await outbox.write(session, MESSAGING)


async def list_accounts(session: AsyncSession, email: str | None) -> Sequence[Account]:
    """The first accounts made (at most LIST_LIMIT), or the one with `email`."""
    query = select(Account).order_by(Account.created_at)
    if email is not None:
        query = query.where(Account.email == email)
    return (await session.scalars(query.limit(LIST_LIMIT))).all()


async def add_grant(
    session: AsyncSession, grant_id: str, account_id: str, millicredits: int, reason: str
) -> None:
    """The grant, and `credits.granted` for billing to book it."""
    session.add(
        Grant(id=grant_id, account_id=account_id, amount_millicredits=millicredits, reason=reason)
    )
    outbox = Outbox()
    outbox.emit(
        "credits.granted",
        credits_pb2.CreditsGranted(
            grant_id=grant_id, amount_millicredits=millicredits, reason=reason
        ),
        account_id=account_id,
    )
    await outbox.write(session, MESSAGING)


async def grant_by_id(session: AsyncSession, grant_id: str) -> Grant | None:
    return await session.get(Grant, grant_id)


async def balance_of(session: AsyncSession, account_id: str) -> Balance | None:
    return await session.get(Balance, account_id)
