"""An account holder's day in the console, in a real browser: sign in, make a sandbox key and
copy its secret, run a model from the form and watch it complete live, decrypt its result in
the page (the secret never leaves the browser), find the job by filter, add a webhook endpoint,
send a test event and see its delivery, rotate and revoke the key, sign out. axe-core checks
every page on the way."""

import re
import time
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect
from standardwebhooks import Webhook

from kiln_crypto import ResultEncryption, decrypt_bytes
from tests.e2e.console.conftest import WAIT_MS, ConsoleSite, HookReceiver, accessible, sign_in

pytestmark = pytest.mark.e2e


def api(site: ConsoleSite, secret: str) -> httpx.Client:
    return httpx.Client(
        base_url=site.api_url, headers={"Authorization": f"Bearer {secret}"}, timeout=60
    )


def make_sandbox_key(page: Page, site: ConsoleSite, name: str) -> str:
    page.goto(site.url("/console/keys"))
    accessible(page)
    site.shot(page, "keys")
    page.fill("#key-name", name)
    page.check("#key-sandbox")
    page.click("form[action='/console/keys'] button[type=submit]")
    expect(page.locator("h1")).to_have_text("Your new key")
    secret = page.input_value("#new-secret")
    assert secret.startswith("sk_test_")
    accessible(page)
    site.shot(page, "key-secret")
    return secret


def test_account_holder_journey(
    console: ConsoleSite, browse: Any, hook_receiver: HookReceiver
) -> None:
    account = console.new_account()
    watched = browse(permissions=["clipboard-read", "clipboard-write"])
    page = watched.page()

    # Sign in (the login page itself is checked too).
    page.goto(console.url("/console/keys"))
    expect(page).to_have_url(re.compile(r"/console/login\?next=/console/keys"))
    accessible(page)
    console.shot(page, "sign-in")
    sign_in(page, console, account)
    expect(page.locator("#balance")).to_contain_text("0")
    accessible(page)

    # A sandbox key, its secret shown once with a copy button.
    secret = make_sandbox_key(page, console, "console e2e")
    page.click("[data-copy='#new-secret']")
    expect(page.locator("[data-copy-state='#new-secret']")).to_have_text("Copied to the clipboard.")
    assert page.evaluate("() => navigator.clipboard.readText()") == secret
    page.click("text=Done")
    row = page.locator("table.keys tbody tr", has_text="console e2e")
    expect(row).to_contain_text(secret[:12])
    expect(row).to_contain_text("sandbox")
    with api(console, secret) as client:
        assert client.get("/models").status_code == 200  # the secret shown is the key's

    # Try a model: the form built from the schema, a delay long enough to watch it live.
    page.goto(console.url("/console/try?model=kiln/text-to-speech"))
    accessible(page)
    console.shot(page, "try-a-model")
    page.fill("#input-text", "Hello from the Kiln console.")
    page.select_option("#input-voice", "en-gb")
    page.select_option("#key-id", label=f"console e2e ({secret[:12]}…)")
    page.fill("#delay", "4")
    page.click("#try-form button[type=submit]")
    page.wait_for_url(re.compile(r"/console/jobs/job_[0-9a-f]{32}$"))
    job_id = page.url.rsplit("/", 1)[1]
    page.evaluate("() => { window.__sameDocument = true; }")
    accessible(page)
    console.shot(page, "job-running")
    # The status turns completed in this very document (the stream), then the page reloads
    # once to show the result.
    expect(page.locator("#job-status")).to_have_text("completed", timeout=WAIT_MS)
    assert page.evaluate("() => window.__sameDocument === true")
    expect(page.locator("#timeline li code", has_text="job.completed")).to_have_count(1)
    expect(page.locator("#result-title")).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#timeline li code", has_text="job.created")).to_have_count(1)
    accessible(page)

    # The result, decrypted in the page with the key's secret.
    page.fill("#decrypt-secret", secret)
    page.click("#decrypt-button")
    expect(page.locator("#decrypt-status")).to_contain_text("Decrypted", timeout=WAIT_MS)
    expect(page.locator("#decrypt-preview audio")).to_have_count(1)
    with page.expect_download() as download_info:
        page.click("#decrypt-save")
    decrypted_in_browser = download_info.value.path().read_bytes()
    with api(console, secret) as client:
        job = client.get(f"/jobs/{job_id}").json()["data"]
    blob = httpx.get(job["result"]["url"], timeout=60).content
    expected = decrypt_bytes(
        blob,
        secret=secret,
        job_id=job_id,
        encryption=ResultEncryption.from_json(job["result"]["encryption"]),
    )
    assert decrypted_in_browser == expected
    assert decrypted_in_browser[:4] == b"RIFF"  # a WAV file
    accessible(page)
    console.shot(page, "job-decrypted")
    # The secret never left the browser: no request carried it, in any part.
    for request in watched.requests:
        carried = request["url"] + repr(request["headers"]) + request["body"].decode("latin-1")
        assert secret not in carried, request["url"]

    # The job in the list, by the API's filters.
    page.goto(console.url("/console/jobs"))
    page.check("#status-completed")
    page.select_option("#filter-model", "kiln/text-to-speech")
    page.click("form.filters button[type=submit]")
    expect(page.locator(f"tr[data-job-id='{job_id}']")).to_have_count(1)
    accessible(page)
    console.shot(page, "jobs")
    page.goto(console.url("/console/jobs?status=failed&model=kiln/text-to-speech"))
    expect(page.locator(f"tr[data-job-id='{job_id}']")).to_have_count(0)
    page.goto(console.url("/console/jobs?sort=bogus"))
    expect(page.locator(".error-box")).to_contain_text("These filters do not work")

    # A webhook endpoint, a test event, its delivery in the log.
    page.goto(console.url("/console/webhooks"))
    accessible(page)
    page.fill("#endpoint-url", hook_receiver.url)
    page.check("input[name=event_types][value='job.completed']")
    page.fill("#endpoint-description", "console e2e receiver")
    page.click("form[action='/console/webhooks'] button[type=submit]")
    expect(page.locator("h1")).to_have_text("Your new webhook endpoint")
    signing_secret = page.input_value("#new-secret")
    assert signing_secret.startswith("whsec_")
    accessible(page)
    page.click("text=Done")
    endpoint = page.locator("li.endpoint", has_text="console e2e receiver")
    expect(endpoint).to_contain_text("job.completed")
    endpoint.locator("form[action$='/test'] button").click()
    expect(page.locator("p.notice")).to_contain_text("test event is on its way")
    delivery = page.locator("li.delivery[data-event-type='webhook.test']")
    # The log refreshes itself (htmx): no reload here.
    expect(delivery.locator(".badge")).to_have_text("delivered", timeout=WAIT_MS)
    expect(delivery.locator("td.status-code").first).to_have_text("204")
    expect(delivery.locator("table.attempts")).to_contain_text("ms")
    accessible(page)
    console.shot(page, "webhooks")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not hook_receiver.hooks():
        time.sleep(0.2)
    [hook] = hook_receiver.hooks()
    # Signed with the secret the page showed once.
    assert Webhook(signing_secret).verify(hook.body, hook.headers)["type"] == "webhook.test"
    # Redeliver it: a second attempt shows up.
    delivery.locator("form button").click()
    expect(page.locator("p.notice")).to_contain_text("sent again")
    expect(delivery.locator("table.attempts tbody tr")).to_have_count(2, timeout=WAIT_MS)
    # Disabled, the endpoint gets nothing: a test event to it fails without being sent.
    page.locator("li.endpoint", has_text="console e2e receiver").locator(
        "form[action$='/disable'] button"
    ).click()
    expect(page.locator("li.endpoint", has_text="console e2e receiver")).to_contain_text("disabled")
    page.locator("li.endpoint", has_text="console e2e receiver").locator(
        "form[action$='/test'] button"
    ).click()
    refused = page.locator("li.delivery", has=page.locator(".badge", has_text="failed"))
    expect(refused).to_contain_text("the endpoint is disabled", timeout=WAIT_MS)
    assert len(hook_receiver.hooks()) == 2  # the test and its redelivery, nothing since
    page.locator("li.endpoint", has_text="console e2e receiver").locator(
        "form[action$='/enable'] button"
    ).click()
    expect(page.locator("li.endpoint", has_text="console e2e receiver")).to_contain_text("enabled")

    # Rotate, then revoke the key.
    page.goto(console.url("/console/keys"))
    row = page.locator("table.keys tbody tr", has_text="console e2e")
    row.locator("summary", has_text="Rotate").click()
    row.locator("form[action$='/rotate'] button").click()
    expect(page.locator("h1")).to_have_text("The key is rotated")
    rotated = page.input_value("#new-secret")
    assert rotated.startswith("sk_test_") and rotated != secret
    accessible(page)
    with api(console, secret) as client:
        assert client.get("/models").status_code == 401  # the old secret stopped at once
    with api(console, rotated) as client:
        assert client.get("/models").status_code == 200
    page.click("text=Done")
    row = page.locator("table.keys tbody tr", has_text="console e2e")
    expect(row).to_contain_text(rotated[:12])
    row.locator("summary", has_text="Revoke").click()
    row.locator("form[action$='/revoke'] button").click()
    expect(page.locator("p.notice")).to_contain_text("revoked")
    expect(page.locator("table.keys tbody tr", has_text="console e2e")).to_have_count(0)
    with api(console, rotated) as client:
        assert client.get("/models").status_code == 401

    # Sign out: the session is over, on the server too.
    page.click("form.signout button")
    expect(page).to_have_url(re.compile(r"/console/login\?reason=signed-out"))
    expect(page.locator("p.notice")).to_contain_text("signed out")
    page.goto(console.url("/console/keys"))
    expect(page).to_have_url(re.compile(r"/console/login"))


def test_a_job_can_be_canceled_from_its_page(console: ConsoleSite, browse: Any) -> None:
    account = console.new_account()
    key = console.new_key(account)
    with api(console, key["secret"]) as client:
        made = client.post(
            "/jobs",
            json={
                "model": "kiln/prompt-to-image",
                "input": {"prompt": "a slow lighthouse"},
                "sandbox": {"outcome": "completed", "delay_s": 60},
            },
        )
        assert made.status_code == 202, made.text
    job_id = made.json()["data"]["id"]
    page = browse().page()
    sign_in(page, console, account)
    page.goto(console.url(f"/console/jobs/{job_id}"))
    page.click("#cancel-form button")
    expect(page.locator("p.notice", has_text="Cancel requested")).to_have_count(1)
    expect(page.locator("#job-status")).to_have_text("canceled", timeout=WAIT_MS)
    expect(page.locator("#cancel-form")).to_be_hidden()
