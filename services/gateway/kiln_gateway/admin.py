"""Operator endpoints (`/api/v1/admin/...`), behind the admin token."""

import asyncio
from typing import Any

from fastapi import APIRouter, Query
from sqlalchemy import select

from kiln_contracts.v1 import credits_pb2, webhooks_pb2
from kiln_gateway.deps import AdminDep, StateDep
from kiln_gateway.errors import BadRequest, Conflict, NotFound, error_responses
from kiln_gateway.keys import create_api_key
from kiln_gateway.models import MESSAGING, Account, Balance, Grant
from kiln_gateway.schemas import AccountCreate, CreditGrant, KeyCreate
from kiln_gateway.service import new_id, new_webhook_secret
from kiln_gateway.sessions import hash_password
from kiln_gateway.views import account_json, key_json
from kiln_runtime.db import transaction
from kiln_runtime.money import InvalidAmount, format_credits, parse_credits
from kiln_runtime.outbox import Outbox

router = APIRouter(prefix="/admin", tags=["admin"])


@router.post("/accounts", status_code=201, responses=error_responses(409))
async def create_account(body: AccountCreate, state: StateDep, _: AdminDep) -> dict[str, Any]:
    email = body.email.strip().lower()
    password_hash = await hash_password(body.password)
    account = Account(
        id=new_id("acct"),
        email=email,
        name=body.name,
        password_hash=password_hash,
        default_webhook_secret=new_webhook_secret(),
    )
    async with transaction(state.runtime.sessions) as session:
        if await session.scalar(select(Account.id).where(Account.email == email)) is not None:
            raise Conflict("An account with this email exists.")
        session.add(account)
        outbox = Outbox()
        outbox.emit(
            "webhooks.endpoint_changed",
            webhooks_pb2.WebhookEndpointChanged(
                endpoint_id=f"default_{account.id}",
                secret=account.default_webhook_secret,
                is_default=True,
            ),
            account_id=account.id,
        )
        await outbox.write(session, MESSAGING)
    state.runtime.relay.wake()
    return {"data": account_json(account)}


@router.get("/accounts")
async def list_accounts(
    state: StateDep, _: AdminDep, email: str | None = Query(default=None, max_length=320)
) -> dict[str, Any]:
    async with state.runtime.sessions() as session:
        query = select(Account).order_by(Account.created_at)
        if email is not None:
            query = query.where(Account.email == email.strip().lower())
        accounts = (await session.scalars(query.limit(100))).all()
    return {"data": [account_json(a) for a in accounts]}


async def _account(state: StateDep, account_id: str) -> Account:
    async with state.runtime.sessions() as session:
        account = await session.get(Account, account_id)
    if account is None:
        raise NotFound("No such account.")
    return account


@router.post("/accounts/{account_id}/credits")
async def grant_credits(
    account_id: str, body: CreditGrant, state: StateDep, _: AdminDep
) -> dict[str, Any]:
    await _account(state, account_id)
    try:
        amount = parse_credits(body.amount)
    except InvalidAmount as exc:
        raise BadRequest(str(exc), [{"field": "amount", "message": str(exc)}]) from exc
    if amount == 0:
        raise BadRequest("amount must not be zero", [{"field": "amount", "message": "zero"}])
    grant_id = new_id("grant")
    waiter = state.waiters.register(grant_id)
    try:
        async with transaction(state.runtime.sessions) as session:
            session.add(
                Grant(
                    id=grant_id,
                    account_id=account_id,
                    amount_millicredits=amount,
                    reason=body.reason,
                )
            )
            outbox = Outbox()
            outbox.emit(
                "credits.granted",
                credits_pb2.CreditsGranted(
                    grant_id=grant_id, amount_millicredits=amount, reason=body.reason
                ),
                account_id=account_id,
            )
            await outbox.write(session, MESSAGING)
        state.runtime.relay.wake()
        try:
            await asyncio.wait_for(waiter.wait(), timeout=max(state.settings.decision_wait_s, 0))
        except TimeoutError:
            pass
    finally:
        state.waiters.release(grant_id, waiter)
    async with state.runtime.sessions() as session:
        grant = await session.get(Grant, grant_id)
        balance = await session.get(Balance, account_id)
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
        key, secret = await create_api_key(session, account_id, body.name, body.sandbox)
    return {"data": key_json(key, secret)}


async def _set_suspended(state: StateDep, account_id: str, suspended: bool) -> dict[str, Any]:
    async with transaction(state.runtime.sessions) as session:
        account = await session.get(Account, account_id)
        if account is None:
            raise NotFound("No such account.")
        account.suspended = suspended
    return {"data": account_json(account)}


@router.post("/accounts/{account_id}/suspend")
async def suspend_account(account_id: str, state: StateDep, _: AdminDep) -> dict[str, Any]:
    return await _set_suspended(state, account_id, True)


@router.post("/accounts/{account_id}/resume")
async def resume_account(account_id: str, state: StateDep, _: AdminDep) -> dict[str, Any]:
    return await _set_suspended(state, account_id, False)
