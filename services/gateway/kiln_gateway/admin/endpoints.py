"""Operator endpoints (`/api/v1/admin/...`), behind the admin token."""

from typing import Any

from fastapi import APIRouter, Query

from kiln_gateway.admin import repository
from kiln_gateway.admin.schemas import AccountCreate, CreditGrant, account_json
from kiln_gateway.admin.service import grant_amount, new_account
from kiln_gateway.deps import AdminDep, StateDep
from kiln_gateway.errors import Conflict, NotFound, error_responses
from kiln_gateway.ids import new_id
from kiln_gateway.keys import repository as keys
from kiln_gateway.keys.passwords import hash_password, normalize_email
from kiln_gateway.keys.schemas import KeyCreate, key_json
from kiln_gateway.state import GatewayState
from kiln_gateway.tables import Account
from kiln_runtime.db import transaction
from kiln_runtime.money import format_credits

router = APIRouter(prefix="/admin", tags=["admin"])


@router.post("/accounts", status_code=201, responses=error_responses(409))
async def create_account(body: AccountCreate, state: StateDep, _: AdminDep) -> dict[str, Any]:
    account = new_account(body.email, body.name, await hash_password(body.password), state.keyring)
    async with transaction(state.runtime.sessions) as session:
        if await repository.email_taken(session, account.email):
            raise Conflict("An account with this email exists.")
        await repository.add_account(session, account)
    state.runtime.publisher.wake()
    return {"data": account_json(account)}


@router.get("/accounts")
async def list_accounts(
    state: StateDep, _: AdminDep, email: str | None = Query(default=None, max_length=320)
) -> dict[str, Any]:
    wanted = normalize_email(email) if email is not None else None
    async with state.runtime.sessions() as session:
        accounts = await repository.list_accounts(session, wanted)
    return {"data": [account_json(a) for a in accounts]}


async def _account(state: GatewayState, account_id: str) -> Account:
    async with state.runtime.sessions() as session:
        account = await keys.account_by_id(session, account_id)
    if account is None:
        raise NotFound("No such account.")
    return account


@router.post("/accounts/{account_id}/credits")
async def grant_credits(
    account_id: str, body: CreditGrant, state: StateDep, _: AdminDep
) -> dict[str, Any]:
    await _account(state, account_id)
    amount = grant_amount(body.amount)
    grant_id = new_id("grant")
    waiter = state.waiters.register(grant_id)
    try:
        async with transaction(state.runtime.sessions) as session:
            await repository.add_grant(session, grant_id, account_id, amount, body.reason)
        state.runtime.publisher.wake()
        await waiter.wait(max(state.settings.decision_wait_s, 0))
    finally:
        state.waiters.release(grant_id, waiter)
    async with state.runtime.sessions() as session:
        grant = await repository.grant_by_id(session, grant_id)
        balance = await repository.balance_of(session, account_id)
    assert grant is not None
    return {
        "data": {
            "grant_id": grant_id,
            "account_id": account_id,
            "amount": format_credits(amount),
            "booked": grant.booked_millicredits is not None,
            "balance": format_credits(balance.available_millicredits if balance else 0),
            "reserved": format_credits(balance.reserved_millicredits if balance else 0),
        }
    }


@router.post("/accounts/{account_id}/keys", status_code=201)
async def create_key(
    account_id: str, body: KeyCreate, state: StateDep, _: AdminDep
) -> dict[str, Any]:
    await _account(state, account_id)
    async with transaction(state.runtime.sessions) as session:
        key, secret = await keys.create_api_key(session, account_id, body.name, body.sandbox)
    return {"data": key_json(key, secret)}


async def _set_suspended(state: GatewayState, account_id: str, suspended: bool) -> dict[str, Any]:
    async with transaction(state.runtime.sessions) as session:
        account = await keys.account_by_id(session, account_id)
        if account is None:
            raise NotFound("No such account.")
        account.suspended = suspended
    state.callers.forget_account(account_id)  # at once here; within api_key_cache_s elsewhere
    return {"data": account_json(account)}


@router.post("/accounts/{account_id}/suspend")
async def suspend_account(account_id: str, state: StateDep, _: AdminDep) -> dict[str, Any]:
    return await _set_suspended(state, account_id, True)


@router.post("/accounts/{account_id}/resume")
async def resume_account(account_id: str, state: StateDep, _: AdminDep) -> dict[str, Any]:
    return await _set_suspended(state, account_id, False)
