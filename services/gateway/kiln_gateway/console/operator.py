"""The operator's pages, behind the operator's sign-in (signin.py): accounts (create, find,
suspend, resume), credit grants and revocations with a reason, and the stack's health. The same
repository calls as the admin API (admin/endpoints.py)."""

import asyncio
from datetime import UTC, datetime

from fastapi import APIRouter, Request
from pydantic import ValidationError
from sqlalchemy import func, select
from starlette.responses import RedirectResponse, Response

from kiln_gateway.admin import repository
from kiln_gateway.admin.schemas import AccountCreate
from kiln_gateway.admin.service import grant_amount, new_account
from kiln_gateway.console.auth import CurrentOperator, OperatorForm, console_sessions
from kiln_gateway.console.errors import ConsoleError
from kiln_gateway.console.health import component_health, kafka_health
from kiln_gateway.console.listing import notice
from kiln_gateway.console.pages import render
from kiln_gateway.deps import StateDep
from kiln_gateway.errors import ApiError
from kiln_gateway.ids import new_id
from kiln_gateway.keys import repository as keys
from kiln_gateway.keys.passwords import hash_password, normalize_email
from kiln_gateway.state import GatewayState
from kiln_gateway.tables import Account, ApiKey, Grant
from kiln_runtime.db import transaction
from kiln_runtime.money import format_credits

router = APIRouter(include_in_schema=False)

NO_ACCOUNT = "There is no such account."
REASON_MAX = 500


@router.get("/console/admin/")
async def operator_home(user: CurrentOperator) -> Response:
    return RedirectResponse("/console/admin/accounts", status_code=303)


async def _accounts_page(
    request: Request,
    user: CurrentOperator,
    state: GatewayState,
    *,
    error: str = "",
    form: dict[str, str] | None = None,
    status: int = 200,
) -> Response:
    wanted = request.query_params.get("email", "")[:320].strip()
    async with state.runtime.sessions() as session:
        accounts = await repository.list_accounts(
            session, normalize_email(wanted) if wanted else None
        )
    return render(
        request,
        "admin_accounts.html",
        {
            "operator": user,
            "nav": "accounts",
            "accounts": accounts,
            "email": wanted,
            "error": error,
            "form": form or {},
            "notice": notice(request),
            "limit": repository.LIST_LIMIT,
        },
        status=status,
    )


@router.get("/console/admin/accounts")
async def accounts_page(request: Request, user: CurrentOperator, state: StateDep) -> Response:
    return await _accounts_page(request, user, state)


@router.post("/console/admin/accounts")
async def create_account(
    request: Request, user: CurrentOperator, form: OperatorForm, state: StateDep
) -> Response:
    entered = {
        "email": form.get("email").strip(),
        "password": form.get("password"),
        "name": form.get("name").strip(),
    }
    try:
        body = AccountCreate.model_validate(entered)
    except ValidationError:
        return await _accounts_page(
            request, user, state,
            error="Give an email address, a password of 8 to 256 characters and a name of at "
            "most 200.", form={k: v for k, v in entered.items() if k != "password"}, status=422,
        )  # fmt: skip
    account = new_account(body.email, body.name, await hash_password(body.password), state.keyring)
    async with transaction(state.runtime.sessions) as session:
        if await repository.email_taken(session, account.email):
            raise ConsoleError(409, "An account with this email exists.")
        await repository.add_account(session, account)
    state.runtime.publisher.wake()
    return RedirectResponse(
        f"/console/admin/accounts/{account.id}?notice=account-created", status_code=303
    )


async def _account(state: GatewayState, account_id: str) -> Account:
    if not account_id.startswith("acct_") or len(account_id) > 64:
        raise ConsoleError(404, NO_ACCOUNT)
    async with state.runtime.sessions() as session:
        account = await keys.account_by_id(session, account_id)
    if account is None:
        raise ConsoleError(404, NO_ACCOUNT)
    return account


async def _account_page(
    request: Request,
    user: CurrentOperator,
    state: GatewayState,
    account: Account,
    *,
    error: str = "",
    result: str = "",
    status: int = 200,
) -> Response:
    async with state.runtime.sessions() as session:
        balance = await repository.balance_of(session, account.id)
        grants = (
            await session.scalars(
                select(Grant)
                .where(Grant.account_id == account.id)
                .order_by(Grant.created_at.desc(), Grant.id)
                .limit(50)
            )
        ).all()
        key_count = await session.scalar(
            select(func.count()).where(ApiKey.account_id == account.id, ApiKey.revoked_at.is_(None))
        )
    return render(
        request,
        "admin_account.html",
        {
            "operator": user,
            "nav": "accounts",
            "account": account,
            "available": balance.available_millicredits if balance else 0,
            "reserved": balance.reserved_millicredits if balance else 0,
            "grants": grants,
            "key_count": int(key_count or 0),
            "error": error,
            "result": result,
            "notice": notice(request),
        },
        status=status,
    )


@router.get("/console/admin/accounts/{account_id}")
async def account_page(
    account_id: str, request: Request, user: CurrentOperator, state: StateDep
) -> Response:
    return await _account_page(request, user, state, await _account(state, account_id))


@router.post("/console/admin/accounts/{account_id}/credits")
async def change_credits(
    account_id: str, request: Request, user: CurrentOperator, form: OperatorForm, state: StateDep
) -> Response:
    """Grant (or, with `direction=revoke`, take back) credits with a reason. Billing books it;
    the page waits for that as the admin API does, up to `decision_wait_s`."""
    account = await _account(state, account_id)
    reason = form.get("reason").strip()
    text = form.get("amount").strip()
    if not reason or len(reason) > REASON_MAX:
        return await _account_page(
            request, user, state, account,
            error=f"Give a reason (1 to {REASON_MAX} characters): it is kept with the grant.",
            status=422,
        )  # fmt: skip
    if text.startswith("-") or not text or len(text) > 32:
        return await _account_page(
            request, user, state, account,
            error="Give a positive amount of credits, such as 25 or 12.5.", status=422,
        )  # fmt: skip
    try:
        amount = grant_amount(text)
    except ApiError as exc:
        return await _account_page(
            request, user, state, account, error=f"The amount is not valid: {exc.message}",
            status=422,
        )  # fmt: skip
    if form.get("direction") == "revoke":
        amount = -amount
    grant_id = new_id("grant")
    waiter = state.waiters.register(grant_id)
    try:
        async with transaction(state.runtime.sessions) as session:
            await repository.add_grant(session, grant_id, account.id, amount, reason)
        state.runtime.publisher.wake()
        await waiter.wait(max(state.settings.decision_wait_s, 0))
    finally:
        state.waiters.release(grant_id, waiter)
    async with state.runtime.sessions() as session:
        grant = await repository.grant_by_id(session, grant_id)
    booked = grant is not None and grant.booked_millicredits is not None
    verb = "Granted" if amount > 0 else "Revoked"
    result = f"{verb} {format_credits(abs(amount))} credits" + (
        "; billing booked it." if booked else "; billing books it in a moment."
    )
    return await _account_page(request, user, state, account, result=result)


async def _set_suspended(state: GatewayState, account_id: str, suspended: bool) -> None:
    async with transaction(state.runtime.sessions) as session:
        account = await keys.account_by_id(session, account_id)
        if account is None:
            raise ConsoleError(404, NO_ACCOUNT)
        account.suspended = suspended
    state.callers.forget_account(account_id)
    if suspended:
        await console_sessions(state).end_account_sessions(account_id)


@router.post("/console/admin/accounts/{account_id}/suspend")
async def suspend(
    account_id: str, user: CurrentOperator, form: OperatorForm, state: StateDep
) -> Response:
    await _account(state, account_id)
    await _set_suspended(state, account_id, True)
    return RedirectResponse(
        f"/console/admin/accounts/{account_id}?notice=account-suspended", status_code=303
    )


@router.post("/console/admin/accounts/{account_id}/resume")
async def resume(
    account_id: str, user: CurrentOperator, form: OperatorForm, state: StateDep
) -> Response:
    await _account(state, account_id)
    await _set_suspended(state, account_id, False)
    return RedirectResponse(
        f"/console/admin/accounts/{account_id}?notice=account-resumed", status_code=303
    )


@router.get("/console/admin/health")
async def health_page(request: Request, user: CurrentOperator, state: StateDep) -> Response:
    components, kafka = await asyncio.gather(component_health(state), kafka_health(state))
    return render(
        request,
        "admin_health.html",
        {
            "operator": user,
            "nav": "health",
            "components": components,
            "kafka": kafka,
            "checked_at": datetime.now(UTC),
        },
    )
