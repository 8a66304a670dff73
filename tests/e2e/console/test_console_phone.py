"""At a phone's width (390 px) every page fits: no sideways scrolling of the page (wide tables
scroll in their own focusable region), the navigation and the forms usable, axe-core clean."""

from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.e2e.console.conftest import PHONE, ConsoleSite, accessible, operator_sign_in, sign_in

pytestmark = pytest.mark.e2e


def fits(page: Page) -> None:
    overflow = page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 1, f"{page.url} is {overflow} px wider than the screen"


def test_every_page_fits_a_phone(console: ConsoleSite, browse: Any) -> None:
    account = console.new_account()
    key = console.new_key(account)
    page = browse(viewport=PHONE, is_mobile=True, has_touch=True).page()
    sign_in(page, console, account)
    with httpx.Client(
        base_url=console.api_url, headers={"Authorization": f"Bearer {key['secret']}"}, timeout=60
    ) as api:
        job = api.post(
            "/jobs", json={"model": "kiln/prompt-to-image", "input": {"prompt": "a phone"}}
        ).json()["data"]
    for path, name in (
        ("/console/", "phone-overview"),
        ("/console/keys", "phone-keys"),
        ("/console/jobs", "phone-jobs"),
        (f"/console/jobs/{job['id']}", "phone-job"),
        ("/console/try", "phone-try"),
        ("/console/webhooks", "phone-webhooks"),
    ):
        page.goto(console.url(path))
        expect(page.locator("nav[aria-label=Main]")).to_be_visible()
        fits(page)
        accessible(page)
        if name in ("phone-overview", "phone-job"):
            console.shot(page, name)
    operator = browse(viewport=PHONE, is_mobile=True, has_touch=True).page()
    operator_sign_in(operator, console)
    for path in ("/console/admin/accounts", f"/console/admin/accounts/{account.id}"):
        operator.goto(console.url(path))
        fits(operator)
        accessible(operator)
