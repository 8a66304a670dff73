"""Who uses the console: the dependencies that find the signed-in account holder or operator
from the session cookie (sessions.py), and the CSRF-checked form of a post (forms.py)."""

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from kiln_gateway.console.errors import SignInRequired
from kiln_gateway.console.forms import Form, check_csrf, read_form
from kiln_gateway.console.sessions import COOKIE, ConsoleSessions, admin_token_sha256
from kiln_gateway.deps import StateDep
from kiln_gateway.keys import repository as keys
from kiln_gateway.state import GatewayState
from kiln_gateway.tables import Account, ConsoleSession


def console_sessions(state: GatewayState) -> ConsoleSessions:
    return ConsoleSessions(state.runtime.sessions, state.settings)


def _here(request: Request) -> str:
    """Where to come back to after signing in (GET pages only; a post starts over)."""
    if request.method != "GET":
        return "/console/"
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


@dataclass(frozen=True)
class AccountUser:
    """An account holder signed in to the console."""

    account: Account
    session: ConsoleSession
    token: str

    @property
    def account_id(self) -> str:
        return self.account.id

    @property
    def csrf_token(self) -> str:
        return self.session.csrf_token


@dataclass(frozen=True)
class OperatorUser:
    session: ConsoleSession
    token: str

    @property
    def csrf_token(self) -> str:
        return self.session.csrf_token


async def signed_in_account(request: Request, state: StateDep) -> AccountUser:
    token = request.cookies.get(COOKIE, "")
    found = await console_sessions(state).find(token)
    session = found.session
    if session is None or session.kind != "account" or session.account_id is None:
        raise SignInRequired(_here(request), reason="expired" if found.expired else "")
    async with state.runtime.sessions() as db:
        account = await keys.account_by_id(db, session.account_id)
    if account is None or account.suspended:
        await console_sessions(state).end(token)
        raise SignInRequired(_here(request), reason="suspended" if account else "")
    return AccountUser(account, session, token)


async def signed_in_operator(request: Request, state: StateDep) -> OperatorUser:
    token = request.cookies.get(COOKIE, "")
    found = await console_sessions(state).find(token)
    session = found.session
    expected = state.settings.admin_token
    if (
        session is None
        or session.kind != "operator"
        or not expected
        or not hmac.compare_digest(session.admin_token_sha256 or "", admin_token_sha256(expected))
    ):
        raise SignInRequired(
            _here(request), operator=True, reason="expired" if found.expired else ""
        )
    return OperatorUser(session, token)


CurrentAccount = Annotated[AccountUser, Depends(signed_in_account)]
CurrentOperator = Annotated[OperatorUser, Depends(signed_in_operator)]


async def account_form(request: Request, user: CurrentAccount) -> Form:
    form = await read_form(request)
    check_csrf(request, form, user.csrf_token)
    return form


async def operator_form(request: Request, user: CurrentOperator) -> Form:
    form = await read_form(request)
    check_csrf(request, form, user.csrf_token)
    return form


# A post of an account holder's page / of an operator's page, its CSRF token checked.
AccountForm = Annotated[Form, Depends(account_form)]
OperatorForm = Annotated[Form, Depends(operator_form)]
