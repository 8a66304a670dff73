"""The console's HTTP edge through the real app (its middlewares, the body guard, the database;
no broker): sign-in and its cookie, the headers of every page, CSRF, form bodies admitted on
console paths only and within the size limit, and sessions that end."""

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import update

from kiln_gateway.console.pages import CONTENT_SECURITY_POLICY
from kiln_gateway.console.sessions import COOKIE, SIGNIN_COOKIE
from kiln_gateway.keys.passwords import hash_password
from kiln_gateway.keys.repository import set_password_hash
from kiln_gateway.tables import Account, ConsoleSession
from kiln_runtime.db import transaction
from tests.unit.gateway.hostile_support import ADMIN_TOKEN, GatewayUnderTest, gateway_under_test

PASSWORD = "correct horse battery"
FORM = {"content-type": "application/x-www-form-urlencoded"}


@pytest.fixture(scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[GatewayUnderTest]:
    async with gateway_under_test(tmp_path_factory.mktemp("console")) as under_test:
        sessions = under_test.client._transport.app.state.gateway.runtime.sessions  # type: ignore[attr-defined]
        async with transaction(sessions) as session:
            await set_password_hash(session, under_test.account_id, await hash_password(PASSWORD))
        yield under_test


def browser(gateway: GatewayUnderTest, host: str = "127.0.0.1:8000") -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=gateway.client._transport, base_url=f"http://{host}", follow_redirects=False
    )


async def email_of(gateway: GatewayUnderTest) -> str:
    runtime = gateway.client._transport.app.state.gateway.runtime  # type: ignore[attr-defined]
    async with runtime.sessions() as session:
        account = await session.get(Account, gateway.account_id)
    assert account is not None
    return str(account.email)


def hidden(page: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert found, name
    return found.group(1)


async def signed_in(gateway: GatewayUnderTest, client: httpx.AsyncClient) -> str:
    """Signs `client` in; returns the session's CSRF token."""
    form = await client.get("/console/login")
    answer = await client.post(
        "/console/login",
        data={
            "email": await email_of(gateway),
            "password": PASSWORD,
            "csrf_token": hidden(form.text, "csrf_token"),
            "next": "/console/keys",
        },
    )
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/console/keys"
    keys = await client.get("/console/keys")
    assert keys.status_code == 200
    return hidden(keys.text, "csrf_token")


async def test_pages_need_a_session_and_carry_the_console_headers(
    gateway: GatewayUnderTest,
) -> None:
    async with browser(gateway) as client:
        answer = await client.get("/console/jobs?status=failed")
        assert answer.status_code == 303
        assert answer.headers["location"] == "/console/login?next=/console/jobs%3Fstatus%3Dfailed"
        login = await client.get("/console/login")
        assert login.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert "script-src 'self'" in CONTENT_SECURITY_POLICY
        assert "unsafe-inline" not in CONTENT_SECURITY_POLICY
        assert login.headers["cache-control"] == "no-store"
        assert login.headers["x-frame-options"] == "DENY"
        assert "<script>" not in login.text and " style=" not in login.text
        static = await client.get("/console/static/console.css")
        assert static.status_code == 200
        assert static.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        # Unknown console paths are pages too, API paths stay JSON.
        missing = await client.get("/console/nowhere")
        assert missing.status_code == 404 and missing.headers["content-type"].startswith(
            "text/html"
        )
        api = await client.get("/api/v1/nowhere")
        assert api.json()["error"]["code"] == "NOT_FOUND"


async def test_sign_in_sets_a_strict_http_only_cookie_secure_outside_loopback(
    gateway: GatewayUnderTest,
) -> None:
    for host, secure in (("127.0.0.1:8000", False), ("console.example.com", True)):
        async with browser(gateway, host) as client:
            form = await client.get("/console/login")
            signin_cookie = form.headers["set-cookie"]
            assert signin_cookie.startswith(f"{SIGNIN_COOKIE}=")
            answer = await client.post(
                "/console/login",
                data={
                    "email": await email_of(gateway),
                    "password": PASSWORD,
                    "csrf_token": hidden(form.text, "csrf_token"),
                },
                headers={"cookie": f"{SIGNIN_COOKIE}={form.cookies[SIGNIN_COOKIE]}"},
            )
            assert answer.status_code == 303, answer.text
            cookie = next(
                c for c in answer.headers.get_list("set-cookie") if c.startswith(f"{COOKIE}=")
            )
            attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
            assert {"httponly", "samesite", "path", "max-age"} <= attributes
            assert "samesite=strict" in cookie.lower() and "path=/console" in cookie.lower()
            assert ("secure" in attributes) is secure


async def test_sign_in_without_its_form_token_or_with_a_wrong_password_fails(
    gateway: GatewayUnderTest,
) -> None:
    async with browser(gateway) as client:
        email = await email_of(gateway)
        answer = await client.post("/console/login", data={"email": email, "password": PASSWORD})
        assert answer.status_code == 403
        form = await client.get("/console/login")
        wrong = await client.post(
            "/console/login",
            data={
                "email": email,
                "password": "nope",
                "csrf_token": hidden(form.text, "csrf_token"),
            },
        )
        assert wrong.status_code == 401
        assert "Invalid email or password." in wrong.text
        assert COOKIE not in client.cookies


async def test_posts_need_the_sessions_csrf_token_and_this_origin(
    gateway: GatewayUnderTest,
) -> None:
    async with browser(gateway) as client:
        token = await signed_in(gateway, client)
        assert (await client.post("/console/keys", data={"name": "a"})).status_code == 403
        bad = await client.post("/console/keys", data={"name": "a", "csrf_token": "x" + token})
        assert bad.status_code == 403
        elsewhere = await client.post(
            "/console/keys",
            data={"name": "a", "csrf_token": token},
            headers={"origin": "https://evil.example"},
        )
        assert elsewhere.status_code == 403
        made = await client.post(
            "/console/keys",
            data={"name": "a", "sandbox": "on", "csrf_token": token},
            headers={"origin": "http://127.0.0.1:8000"},
        )
        assert made.status_code == 201
        assert "sk_test_" in made.text
        assert made.headers["cache-control"] == "no-store"  # the secret page is never cached


async def test_form_bodies_pass_the_guard_on_console_paths_only_and_within_the_limit(
    gateway: GatewayUnderTest,
) -> None:
    async with browser(gateway) as client:
        token = await signed_in(gateway, client)
        api = await client.post(
            "/api/v1/jobs", content="model=x", headers={**FORM, **gateway.auth()}
        )
        assert api.status_code == 400 and api.json()["error"]["code"] == "BAD_REQUEST"
        huge = "name=" + "a" * (gateway.settings.max_body_bytes + 1)
        too_large = await client.post("/console/keys", content=huge, headers=FORM)
        assert too_large.status_code == 413
        nul = await client.post(
            "/console/keys", content=f"name=a%00b&csrf_token={token}", headers=FORM
        )
        assert nul.status_code == 422
        not_utf8 = await client.post(
            "/console/keys", content=f"name=%ff&csrf_token={token}", headers=FORM
        )
        assert not_utf8.status_code == 400
        json_body = await client.post(
            "/console/keys", content='{"name": "a"}', headers={"content-type": "application/json"}
        )
        assert json_body.status_code == 400


async def test_an_idle_session_ends_and_sign_out_ends_it_on_the_server(
    gateway: GatewayUnderTest,
) -> None:
    runtime = gateway.client._transport.app.state.gateway.runtime  # type: ignore[attr-defined]
    async with browser(gateway) as client:
        await signed_in(gateway, client)
        idle = timedelta(seconds=gateway.settings.console_idle_timeout_s + 1)
        async with transaction(runtime.sessions) as session:
            await session.execute(
                update(ConsoleSession).values(last_seen_at=datetime.now(UTC) - idle)
            )
        answer = await client.get("/console/keys")
        assert answer.status_code == 303
        assert answer.headers["location"].endswith("reason=expired")

        token = await signed_in(gateway, client)
        cookie = client.cookies[COOKIE]
        out = await client.post("/console/logout", data={"csrf_token": token})
        assert out.status_code == 303
        # The old cookie, replayed, no longer signs anybody in.
        async with browser(gateway) as replay:
            replay.cookies.set(COOKIE, cookie)
            assert (await replay.get("/console/keys")).status_code == 303


async def test_an_operator_session_ends_when_the_admin_token_changes(
    gateway: GatewayUnderTest,
) -> None:
    async with browser(gateway) as client:
        form = await client.get("/console/admin/login")
        answer = await client.post(
            "/console/admin/login",
            data={"admin_token": ADMIN_TOKEN, "csrf_token": hidden(form.text, "csrf_token")},
        )
        assert answer.status_code == 303
        assert (await client.get("/console/admin/accounts")).status_code == 200
        # An operator session is not an account holder's.
        assert (await client.get("/console/keys")).status_code == 303
        gateway.settings.admin_token = "a-new-admin-token-" + "b" * 20
        try:
            answer = await client.get("/console/admin/accounts")
        finally:
            gateway.settings.admin_token = ADMIN_TOKEN
        assert answer.status_code == 303
        assert answer.headers["location"].startswith("/console/admin/login")
