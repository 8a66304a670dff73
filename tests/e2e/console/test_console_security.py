"""What the console must refuse, tried from a real browser and over plain HTTP: forms without
the session's CSRF token or from another origin, another account's objects (404, as on the
API), an API key or an API session token used as a console session, a console cookie on the
API, and a session past its end."""

import re
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from kiln_gateway.console.sessions import token_sha256
from tests.e2e.console.conftest import (
    WAIT_MS,
    ConsoleAccount,
    ConsoleSite,
    accessible,
    sign_in,
)

pytestmark = pytest.mark.e2e


def csrf_token(page: Page) -> str:
    return page.locator("input[name=csrf_token]").first.input_value()


def key_names(site: ConsoleSite, account: ConsoleAccount) -> list[str]:
    with httpx.Client(base_url=site.api_url, timeout=60) as anonymous:
        token = anonymous.post(
            "/auth/token", json={"email": account.email, "password": account.password}
        ).json()["data"]["token"]
        keys = anonymous.get("/keys", headers={"Authorization": f"Bearer {token}"})
    return [k["name"] for k in keys.json()["data"]]


@pytest.fixture
def attacker_site() -> Iterator[tuple[str, dict[str, str]]]:
    """Another origin (another port, and `localhost` instead of 127.0.0.1: another site too)
    serving pages that post forms to the console by themselves."""
    pages: dict[str, str] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = pages.get(self.path, "").encode()
            self.send_response(200 if body else 404)
            self.send_header("content-type", "text/html")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}", pages
    server.shutdown()
    server.server_close()


def forged_form(action: str, fields: dict[str, str]) -> str:
    inputs = "".join(f'<input type="hidden" name="{k}" value="{v}">' for k, v in fields.items())
    return (
        f'<html><body><form id="f" method="post" action="{action}">{inputs}</form>'
        '<script>document.getElementById("f").submit()</script></body></html>'
    )


def test_csrf_forms_without_the_session_token_or_from_elsewhere_are_refused(
    console: ConsoleSite, browse: Any, attacker_site: tuple[str, dict[str, str]]
) -> None:
    account = console.new_account()
    watched = browse()
    page = watched.page()
    sign_in(page, console, account)
    page.goto(console.url("/console/keys"))
    token = csrf_token(page)

    # The same browser, with its session cookie, but without the token or with a wrong one.
    for fields in ({"name": "no-token"}, {"name": "bad-token", "csrf_token": "x" * 43}):
        answer = page.request.post(console.url("/console/keys"), form=fields)
        assert answer.status == 403, answer.text()
        assert "did not come from the console" in answer.text()
    # The right token from another origin (a page of the same host on another port).
    answer = page.request.post(
        console.url("/console/keys"),
        form={"name": "cross-origin", "csrf_token": token},
        headers={"Origin": "http://127.0.0.1:1"},
    )
    assert answer.status == 403
    # A real cross-site page that posts a form by itself (the token cannot be known there).
    host, pages = attacker_site
    pages["/forge"] = forged_form(console.url("/console/keys"), {"name": "forged", "sandbox": "on"})
    attacker = watched.page()
    attacker.goto(f"http://{host.replace('127.0.0.1', 'localhost')}/forge")
    attacker.wait_for_load_state("load")
    expect(attacker.locator("body")).not_to_contain_text("Your new key", timeout=5000)
    # And a token of another session is no better.
    other = console.new_account()
    other_page = browse().page()
    sign_in(other_page, console, other)
    other_page.goto(console.url("/console/keys"))
    answer = page.request.post(
        console.url("/console/keys"),
        form={"name": "other-token", "csrf_token": csrf_token(other_page)},
    )
    assert answer.status == 403
    # The sign-in form has its own token (a cookie and a field).
    fresh = browse().page()
    answer = fresh.request.post(
        console.url("/console/login"), form={"email": account.email, "password": account.password}
    )
    assert answer.status == 403
    assert not [c for c in fresh.context.cookies() if c["name"] == "kiln_console"]

    assert key_names(console, account) == []  # none of these made a key
    # With its token, from the page, the form works.
    answer = page.request.post(
        console.url("/console/keys"), form={"name": "real", "csrf_token": token}
    )
    assert answer.status == 201
    assert key_names(console, account) == ["real"]


def test_another_accounts_objects_are_not_found(console: ConsoleSite, browse: Any) -> None:
    owner = console.new_account()
    key = console.new_key(owner)
    headers = {"Authorization": f"Bearer {key['secret']}"}
    with httpx.Client(base_url=console.api_url, headers=headers, timeout=60) as api:
        job = api.post(
            "/jobs", json={"model": "kiln/text-to-speech", "input": {"text": "mine"}}
        ).json()["data"]
        endpoint = api.post("/webhooks", json={"url": "http://127.0.0.1:9/hook"}).json()["data"]

    intruder = console.new_account()
    page = browse().page()
    sign_in(page, console, intruder)
    page.goto(console.url("/console/keys"))
    token = csrf_token(page)
    for path in (
        f"/console/jobs/{job['id']}",
        f"/console/jobs/{job['id']}/events",
        f"/console/jobs/{job['id']}/result",
    ):
        answer = page.request.get(console.url(path))
        assert answer.status == 404, path
    page.goto(console.url(f"/console/jobs/{job['id']}"))
    expect(page.locator("h1")).to_have_text("Not found")
    accessible(page)
    console.shot(page, "not-found")
    for path in (
        f"/console/keys/{key['id']}/revoke",
        f"/console/keys/{key['id']}/rotate",
        f"/console/jobs/{job['id']}/cancel",
        f"/console/webhooks/{endpoint['id']}/test",
        f"/console/webhooks/{endpoint['id']}/disable",
        f"/console/webhooks/{endpoint['id']}/delete",
    ):
        answer = page.request.post(console.url(path), form={"csrf_token": token})
        assert answer.status == 404, path
    page.goto(console.url("/console/jobs"))
    expect(page.locator(f"tr[data-job-id='{job['id']}']")).to_have_count(0)
    page.goto(console.url("/console/webhooks"))
    expect(page.locator(f"li.endpoint[data-endpoint-id='{endpoint['id']}']")).to_have_count(0)
    # The owner's key still works: nothing was revoked.
    with httpx.Client(base_url=console.api_url, headers=headers, timeout=60) as api:
        assert api.get(f"/jobs/{job['id']}").status_code == 200


def test_api_credentials_are_not_console_sessions_nor_the_reverse(
    console: ConsoleSite, browse: Any
) -> None:
    account = console.new_account()
    key = console.new_key(account)
    with httpx.Client(base_url=console.api_url, timeout=60) as anonymous:
        session_token = anonymous.post(
            "/auth/token", json={"email": account.email, "password": account.password}
        ).json()["data"]["token"]
    host = console.base.removeprefix("http://").split(":")[0]
    for credential in (key["secret"], session_token):
        context = browse().context
        context.add_cookies(
            [{"name": "kiln_console", "value": credential, "domain": host, "path": "/console"}]
        )
        page = context.new_page()
        page.goto(console.url("/console/keys"))
        expect(page).to_have_url(re.compile(r"/console/login"))
        answer = page.request.get(
            console.url("/console/keys"),
            headers={"Authorization": f"Bearer {credential}"},
            max_redirects=0,
        )
        assert answer.status == 303
    # A console session's cookie does not reach the API.
    page = browse().page()
    sign_in(page, console, account)
    answer = page.request.get(console.api_url + "/jobs")
    assert answer.status == 401
    cookie = next(c for c in page.context.cookies() if c["name"] == "kiln_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"
    assert not cookie["secure"]  # on loopback only (cookie_is_secure)
    answer = httpx.get(
        console.api_url + "/jobs", headers={"Authorization": f"Bearer {cookie['value']}"}
    )
    assert answer.status_code == 401


def test_a_session_past_its_end_signs_in_again(console: ConsoleSite, browse: Any) -> None:
    account = console.new_account()
    page = browse().page()
    sign_in(page, console, account)
    cookie = next(c for c in page.context.cookies() if c["name"] == "kiln_console")
    # Its row says it ended (as the clock would, after console_session_ttl_s).
    database = console.stack_root / "data" / "gateway.db"
    ended = (datetime.now(UTC) - timedelta(minutes=1)).isoformat(sep=" ")
    with sqlite3.connect(database, timeout=30) as db:
        changed = db.execute(
            "UPDATE console_sessions SET expires_at = ? WHERE id = ?",
            (ended, token_sha256(cookie["value"])),
        ).rowcount
    assert changed == 1
    page.goto(console.url("/console/webhooks"))
    expect(page).to_have_url(re.compile(r"/console/login\?next=/console/webhooks&reason=expired"))
    expect(page.locator("p.notice")).to_have_text("Your session ended. Sign in again.")
    page.fill("#email", account.email)
    page.fill("#password", account.password)
    page.click("form button[type=submit]")
    page.wait_for_url(console.url("/console/webhooks"), timeout=WAIT_MS)


def test_wrong_passwords_are_refused_then_throttled(console: ConsoleSite, browse: Any) -> None:
    account = console.new_account()
    page = browse().page()
    for _ in range(5):
        page.goto(console.url("/console/login"))
        page.fill("#email", account.email)
        page.fill("#password", "not the password")
        page.click("form button[type=submit]")
        expect(page.locator(".error-box")).to_have_text("Invalid email or password.")
    accessible(page)
    page.goto(console.url("/console/login"))
    page.fill("#email", account.email)
    page.fill("#password", account.password)  # even the right one, until the window ends
    page.click("form button[type=submit]")
    expect(page.locator(".error-box")).to_contain_text("Too many failed logins")
