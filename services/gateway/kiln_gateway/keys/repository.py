"""All SQL of accounts and API keys."""

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import Select, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from kiln_gateway.keys.service import new_api_key
from kiln_gateway.pagination import PageRequest, fetch_page
from kiln_gateway.tables import Account, ApiKey


async def account_by_id(session: AsyncSession, account_id: str) -> Account | None:
    return await session.get(Account, account_id)


async def account_by_email(session: AsyncSession, email: str) -> Account | None:
    return await session.scalar(select(Account).where(Account.email == email))


async def api_key_by_secret_hash(session: AsyncSession, secret_sha256: str) -> ApiKey | None:
    return await session.scalar(select(ApiKey).where(ApiKey.secret_sha256 == secret_sha256))


async def create_api_key(
    session: AsyncSession, account_id: str, name: str, sandbox: bool
) -> tuple[ApiKey, str]:
    """Make a key for `account_id` in `session`'s transaction; returns it and its secret."""
    key, secret = new_api_key(account_id, name, sandbox)
    session.add(key)
    await session.flush()
    return key, secret


def _account_keys(account_id: str, include_revoked: bool) -> Select[ApiKey]:
    query = select(ApiKey).where(ApiKey.account_id == account_id)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    return query.order_by(ApiKey.created_at.desc(), ApiKey.id)


async def list_api_keys(
    session: AsyncSession, account_id: str, include_revoked: bool, page: PageRequest
) -> tuple[Sequence[ApiKey], int]:
    """A page of the account's keys, newest first, and how many there are."""
    return await fetch_page(session, _account_keys(account_id, include_revoked), page)


async def revoke_api_key(
    session: AsyncSession, account_id: str, key_id: str
) -> tuple[ApiKey, bool] | None:
    """Revoke a key of `account_id`; returns it and whether this call revoked it (of two
    racing calls, exactly one does), or None when the account has no such key."""
    revoked = await session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.account_id == account_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
        .execution_options(synchronize_session=False)
    )
    key = await session.get(ApiKey, key_id, populate_existing=True)
    if key is None or key.account_id != account_id:
        return None
    return key, bool(revoked.rowcount)  # type: ignore[attr-defined]


async def set_password_hash(session: AsyncSession, account_id: str, password_hash: str) -> None:
    stored = await session.get(Account, account_id)
    if stored is not None:
        stored.password_hash = password_hash
