"""Signing in and out: account holders with their email and password (the argon2 hashes and
the login throttle of keys/), the operator with the admin token, entered once into a form and
kept only as its hash in a server-side session (sessions.py)."""

import hmac
import secrets

from fastapi import APIRouter, Request
from starlette.responses import RedirectResponse, Response

from kiln_gateway.console.auth import console_sessions
from kiln_gateway.console.errors import safe_next
from kiln_gateway.console.forms import Form, check_origin, read_form
from kiln_gateway.console.pages import render
from kiln_gateway.console.sessions import (
    COOKIE,
    SIGNIN_COOKIE,
    clear_session_cookie,
    csrf_matches,
    set_session_cookie,
    set_signin_cookie,
)
from kiln_gateway.deps import StateDep
from kiln_gateway.keys import repository as keys
from kiln_gateway.keys.login_throttle import LoginThrottle, client_address
from kiln_gateway.keys.passwords import (
    hash_password,
    needs_rehash,
    normalize_email,
    password_matches,
)
from kiln_gateway.ratelimits import RateLimited
from kiln_runtime.db import transaction

router = APIRouter(include_in_schema=False)

REASONS = {
    "expired": "Your session ended. Sign in again.",
    "suspended": "This account is suspended. Contact the operator.",
    "signed-out": "You are signed out.",
}
INVALID_LOGIN = "Invalid email or password."
INVALID_TOKEN = "Invalid admin token."


def _signin_page(
    request: Request,
    template: str,
    *,
    next_path: str,
    error: str = "",
    email: str = "",
    status: int = 200,
) -> Response:
    """The sign-in form with a fresh anti-CSRF value (its cookie and its hidden field)."""
    nonce = secrets.token_urlsafe(24)
    notice = REASONS.get(request.query_params.get("reason", ""), "")
    response = render(
        request,
        template,
        {"csrf_token": nonce, "next": next_path, "error": error, "notice": notice, "email": email},
        status=status,
    )
    set_signin_cookie(response, request, nonce)
    return response


def _checked_signin_form(request: Request, form: Form) -> bool:
    check_origin(request)
    return csrf_matches(request.cookies.get(SIGNIN_COOKIE, ""), form.get("csrf_token") or None)


def _signed_in(request: Request, token: str, ttl_s: int, next_path: str) -> Response:
    response = RedirectResponse(next_path, status_code=303)
    set_session_cookie(response, request, token, ttl_s)
    response.delete_cookie(SIGNIN_COOKIE, path="/console")
    return response


@router.get("/console")
async def console_root() -> Response:
    return RedirectResponse("/console/", status_code=308)


@router.get("/console/login")
async def signin_form(request: Request) -> Response:
    next_path = safe_next(request.query_params.get("next"))
    return _signin_page(request, "signin.html", next_path=next_path)


@router.post("/console/login")
async def signin(request: Request, state: StateDep) -> Response:
    form = await read_form(request)
    next_path = safe_next(form.get("next"))
    email = normalize_email(form.get("email"))[:320]
    password = form.get("password")[:256]
    if not _checked_signin_form(request, form):
        return _signin_page(
            request,
            "signin.html",
            next_path=next_path,
            email=email,
            error="The form expired. Try again.",
            status=403,
        )
    if not email or not password:
        return _signin_page(
            request,
            "signin.html",
            next_path=next_path,
            email=email,
            error=INVALID_LOGIN,
            status=401,
        )
    settings = state.settings
    address = client_address(request, settings.trusted_proxy_hops)
    throttle = LoginThrottle(state.rate_limiter, settings)
    try:
        await throttle.attempt(request, email, address)
    except RateLimited as exc:
        return _signin_page(
            request, "signin.html", next_path=next_path, email=email, error=exc.message, status=429
        )
    async with state.runtime.sessions() as session:
        account = await keys.account_by_email(session, email)
    password_hash = account.password_hash if account is not None else None
    if not await password_matches(password_hash, password) or account is None:
        return _signin_page(
            request,
            "signin.html",
            next_path=next_path,
            email=email,
            error=INVALID_LOGIN,
            status=401,
        )
    await throttle.succeeded(email, address)
    if account.suspended:
        return _signin_page(
            request,
            "signin.html",
            next_path=next_path,
            email=email,
            error=REASONS["suspended"],
            status=403,
        )
    if needs_rehash(account.password_hash):
        new_hash = await hash_password(password)
        async with transaction(state.runtime.sessions) as session:
            await keys.set_password_hash(session, account.id, new_hash)
    token, _ = await console_sessions(state).create(
        "account", account_id=account.id, replacing=request.cookies.get(COOKIE)
    )
    return _signed_in(request, token, settings.console_session_ttl_s, next_path)


@router.post("/console/logout")
async def sign_out(request: Request, state: StateDep) -> Response:
    """Ends the session of the cookie. The form's token is checked against that session (a
    page of another site cannot sign a person out)."""
    form = await read_form(request)
    token = request.cookies.get(COOKIE, "")
    found = await console_sessions(state).find(token)
    check_origin(request)
    operator = found.session is not None and found.session.kind == "operator"
    if found.session is not None and csrf_matches(found.session.csrf_token, form.get("csrf_token")):
        await console_sessions(state).end(token)
    elif found.session is not None:
        return RedirectResponse("/console/", status_code=303)
    page = "/console/admin/login" if operator else "/console/login"
    response = RedirectResponse(f"{page}?reason=signed-out", status_code=303)
    clear_session_cookie(response, request)
    return response


# ------------------------------------------------------------------------- the operator


@router.get("/console/admin/login")
async def operator_signin_form(request: Request) -> Response:
    next_path = safe_next(request.query_params.get("next"), "/console/admin/")
    return _signin_page(request, "operator_signin.html", next_path=next_path)


@router.post("/console/admin/login")
async def operator_signin(request: Request, state: StateDep) -> Response:
    form = await read_form(request)
    next_path = safe_next(form.get("next"), "/console/admin/")
    if not next_path.startswith("/console/admin/"):
        next_path = "/console/admin/"
    if not _checked_signin_form(request, form):
        return _signin_page(
            request,
            "operator_signin.html",
            next_path=next_path,
            error="The form expired. Try again.",
            status=403,
        )
    settings = state.settings
    address = client_address(request, settings.trusted_proxy_hops)
    # Failed tries count per address only: a bucket for every operator would let anyone lock
    # the operator out.
    throttle = LoginThrottle(state.rate_limiter, settings)
    bucket = f"operator@{address}"
    try:
        await throttle.attempt(request, bucket, address)
    except RateLimited as exc:
        return _signin_page(
            request, "operator_signin.html", next_path=next_path, error=exc.message, status=429
        )
    given = form.get("admin_token")[:512]
    expected = settings.admin_token
    if not expected or not given or not hmac.compare_digest(given.encode(), expected.encode()):
        return _signin_page(
            request, "operator_signin.html", next_path=next_path, error=INVALID_TOKEN, status=401
        )
    await throttle.succeeded(bucket, address)
    token, _ = await console_sessions(state).create(
        "operator", admin_token=expected, replacing=request.cookies.get(COOKIE)
    )
    return _signed_in(request, token, settings.console_session_ttl_s, next_path)
