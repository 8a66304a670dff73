"""API keys (`/api/v1/keys`), managed with an account session token.

A key's secret is shown once, when the key is made; only its SHA-256 is stored, with the
`kiln-hpke-v1` salt and public key derived from it (DESIGN.md, "Result encryption").

- Revoking sets `revoked_at`; every request authenticates against the database, so the key
  gets 401 on its very next request.
- Rotating makes a new key (a new id, a new secret, a new salt and public key) with the old
  one's name and kind, and revokes the old one, in one transaction. The id changes because a
  result's `encryption.key_id` names the key material it was sealed to: results made before the
  rotation stay decryptable with the old secret and still name the old id.
- Another account's key id is 404, like a missing one.
"""

from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from kiln_crypto import make_result_key
from kiln_gateway.deps import SessionDep, StateDep
from kiln_gateway.errors import Conflict, NotFound, error_responses
from kiln_gateway.models import ApiKey
from kiln_gateway.schemas import KeyCreate
from kiln_gateway.service import new_api_secret, new_id, secret_sha256
from kiln_gateway.views import key_json
from kiln_runtime.db import transaction

router = APIRouter(prefix="/keys", tags=["keys"])

KEY_ID = Path(pattern=r"^key_[0-9a-f]{32}$", description="A key id, `key_` + 32 hex digits.")


def new_api_key(account_id: str, name: str, sandbox: bool) -> tuple[ApiKey, str]:
    """A new key row and its secret (which the caller shows once and never stores)."""
    secret = new_api_secret(sandbox)
    material = make_result_key(secret)
    key = ApiKey(
        id=new_id("key"),
        account_id=account_id,
        name=name,
        prefix=secret[:12],
        secret_sha256=secret_sha256(secret),
        sandbox=sandbox,
        result_salt=material.salt,
        result_public_key=material.public_key,
        created_at=datetime.now(UTC),
    )
    return key, secret


async def create_api_key(
    session: AsyncSession, account_id: str, name: str, sandbox: bool
) -> tuple[ApiKey, str]:
    """Make a key for `account_id` in `session`'s transaction; returns it and its secret."""
    key, secret = new_api_key(account_id, name, sandbox)
    session.add(key)
    await session.flush()
    return key, secret


# ------------------------------------------------------------------------- response shapes


class ApiKeyData(BaseModel):
    id: str
    name: str
    prefix: str = Field(description="The secret's first characters, to recognise it.")
    kind: Literal["live", "sandbox"]
    sandbox: bool
    created_at: str
    last_used_at: str | None
    revoked_at: str | None


class NewApiKeyData(ApiKeyData):
    secret: str = Field(description="The API secret. Shown only in this response.")
    rotated_from: str | None = Field(default=None, description="The key this one replaced.")


class ApiKeyResponse(BaseModel):
    data: ApiKeyData


class NewApiKeyResponse(BaseModel):
    data: NewApiKeyData


class Pagination(BaseModel):
    page: int
    per_page: int
    total_pages: int
    total_results: int


class ApiKeyListResponse(BaseModel):
    data: list[ApiKeyData]
    pagination: Pagination


# ------------------------------------------------------------------------- routes


@router.post("", status_code=201, response_model=NewApiKeyResponse)
async def create_key(body: KeyCreate, account: SessionDep, state: StateDep) -> dict[str, Any]:
    """Make an `sk_live_` key (or `sk_test_` with `"sandbox": true`). The secret is shown once."""
    async with transaction(state.runtime.sessions) as session:
        key, secret = await create_api_key(session, account.id, body.name, body.sandbox)
    return {"data": key_json(key, secret)}


@router.get("", response_model=ApiKeyListResponse)
async def list_keys(
    account: SessionDep,
    state: StateDep,
    page: int = Query(default=1, ge=1, le=100_000),
    per_page: int = Query(default=25, ge=1, le=100),
    include_revoked: bool = Query(default=False),
) -> dict[str, Any]:
    """The account's keys, newest first; never a secret nor its hash."""
    where = [ApiKey.account_id == account.id]
    if not include_revoked:
        where.append(ApiKey.revoked_at.is_(None))
    async with state.runtime.sessions() as session:
        total = int(
            await session.scalar(select(func.count()).select_from(ApiKey).where(*where)) or 0
        )
        keys = (
            await session.scalars(
                select(ApiKey)
                .where(*where)
                .order_by(ApiKey.created_at.desc(), ApiKey.id)
                .offset((page - 1) * per_page)
                .limit(per_page)
            )
        ).all()
    return {
        "data": [key_json(k) for k in keys],
        "pagination": {
            "page": page,
            "per_page": per_page,
            "total_pages": (total + per_page - 1) // per_page,
            "total_results": total,
        },
    }


async def _revoke(session: AsyncSession, account_id: str, key_id: str) -> tuple[ApiKey, bool]:
    """Revoke a key of `account_id`; returns it and whether this call revoked it (of two
    racing calls, exactly one does)."""
    revoked = await session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.account_id == account_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
        .execution_options(synchronize_session=False)
    )
    key = await session.get(ApiKey, key_id, populate_existing=True)
    if key is None or key.account_id != account_id:
        raise NotFound("No such key.")
    return key, bool(revoked.rowcount)  # type: ignore[attr-defined]


@router.delete("/{key_id}", response_model=ApiKeyResponse)
async def revoke_key(account: SessionDep, state: StateDep, key_id: str = KEY_ID) -> dict[str, Any]:
    """Revoke a key: it is refused (401) from its next request on. Revoking twice is harmless."""
    async with transaction(state.runtime.sessions) as session:
        key, _ = await _revoke(session, account.id, key_id)
    return {"data": key_json(key)}


@router.post(
    "/{key_id}/rotate",
    status_code=201,
    response_model=NewApiKeyResponse,
    responses=error_responses(409),
)
async def rotate_key(account: SessionDep, state: StateDep, key_id: str = KEY_ID) -> dict[str, Any]:
    """Replace a key: a new key (new id and secret) with the same name and kind; the old one
    is revoked at once. The new secret is shown once."""
    async with transaction(state.runtime.sessions) as session:
        old, revoked_now = await _revoke(session, account.id, key_id)
        if not revoked_now:
            raise Conflict("This key is revoked; make a new one instead.")
        key, secret = await create_api_key(session, account.id, old.name, old.sandbox)
    return {"data": {**key_json(key, secret), "rotated_from": old.id}}
