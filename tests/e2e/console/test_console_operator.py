"""The operator's console: sign in with the admin token, find an account, grant and revoke
credits with a reason (the account holder sees the new balance), suspend and resume it, and
the health view of the stack's components."""

import re
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.console.conftest import (
    WAIT_MS,
    ConsoleSite,
    accessible,
    operator_sign_in,
    sign_in,
)

pytestmark = pytest.mark.e2e


def balance_shows(page: Page, site: ConsoleSite, amount: str) -> None:
    """The overview's balance, reloaded until billing's booking reached the gateway."""
    for _ in range(60):
        page.goto(site.url("/console/"))
        if page.locator("#balance").inner_text().split()[0] == amount:
            return
        page.wait_for_timeout(1000)
    expect(page.locator("#balance")).to_contain_text(amount)


def test_operator_grants_credits_and_the_account_holder_sees_them(
    console: ConsoleSite, browse: Any
) -> None:
    account = console.new_account()
    holder = browse().page()
    sign_in(holder, console, account)
    expect(holder.locator("#balance")).to_contain_text("0")

    operator = browse().page()
    operator.goto(console.url("/console/admin/accounts"))
    expect(operator).to_have_url(re.compile(r"/console/admin/login"))
    accessible(operator)
    console.shot(operator, "operator-sign-in")
    operator.fill("#admin_token", "not-the-token")
    operator.click("form button[type=submit]")
    expect(operator.locator(".error-box")).to_have_text("Invalid admin token.")
    operator_sign_in(operator, console)
    # The account holder's session is not an operator's.
    holder.goto(console.url("/console/admin/accounts"))
    expect(holder).to_have_url(re.compile(r"/console/admin/login"))

    operator.fill("#find-email", account.email)
    operator.click("form[role=search] button")
    operator.click(f"text={account.email}")
    expect(operator.locator("h1")).to_have_text(account.email)
    accessible(operator)
    operator.fill("#credit-amount", "25")
    operator.fill("#credit-reason", "console e2e welcome credits")
    operator.click("form[action$='/credits'] button[type=submit]")
    expect(operator.locator("#grant-result")).to_contain_text("Granted 25 credits")
    expect(operator.locator("table", has_text="console e2e welcome credits")).to_have_count(1)
    console.shot(operator, "operator-account")
    balance_shows(holder, console, "25")
    console.shot(holder, "overview")

    operator.check("#direction-revoke")
    operator.fill("#credit-amount", "5.5")
    operator.fill("#credit-reason", "console e2e correction")
    operator.click("form[action$='/credits'] button[type=submit]")
    expect(operator.locator("#grant-result")).to_contain_text("Revoked 5.5 credits")
    balance_shows(holder, console, "19.5")

    # Suspended: the holder's session ends; resumed: they sign in again.
    operator.click("form[action$='/suspend'] button")
    expect(operator.locator("#account-status")).to_have_text("suspended")
    holder.goto(console.url("/console/keys"))
    expect(holder).to_have_url(re.compile(r"/console/login"))
    holder.fill("#email", account.email)
    holder.fill("#password", account.password)
    holder.click("form button[type=submit]")
    expect(holder.locator(".error-box")).to_contain_text("suspended")
    operator.click("form[action$='/resume'] button")
    expect(operator.locator("#account-status")).to_have_text("active")
    sign_in(holder, console, account)

    # Make an account from the console.
    operator.goto(console.url("/console/admin/accounts"))
    accessible(operator)
    console.shot(operator, "operator-accounts")
    operator.fill("#new-email", f"made-{account.email}")
    operator.fill("#new-name", "Made in the console")
    operator.fill("#new-password", "a long enough password")
    operator.click("form[method=post][action='/console/admin/accounts'] button[type=submit]")
    expect(operator.locator("p.notice")).to_contain_text("The account is made")
    expect(operator.locator("h1")).to_have_text(f"made-{account.email}")


def test_operator_health_view(console: ConsoleSite, browse: Any) -> None:
    page = browse().page()
    operator_sign_in(page, console)
    page.goto(console.url("/console/admin/health"))
    gateway = page.locator("tr[data-component='gateway (this replica)']")
    expect(gateway.locator(".badge")).to_have_text("ready")
    expect(gateway).to_contain_text("database: ok")
    for service in ("billing", "scheduler", "inference", "notifier"):
        expect(page.locator(f"tr[data-component='{service}'] .badge")).to_have_text("ready")
        expect(page.locator(f"tr[data-component='{service}']")).to_contain_text("kafka: ok")
        # Its consumer group is on the broker, with the partitions it consumes.
        group = page.locator(f"tr[data-group='{service}']")
        expect(group.locator(".badge")).to_have_text("known", timeout=WAIT_MS)
    expect(page.locator("#dead-letters")).to_have_count(1)
    accessible(page)
    console.shot(page, "operator-health")
