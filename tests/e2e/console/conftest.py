"""The console in a real browser: Playwright (the PyPI wheel) driving Debian's Chromium
(`/usr/bin/chromium`, installed by `make install`; never `playwright install`), against the
shared local stack of tests/e2e/conftest.py.

Every page a test opens can be checked with axe-core (`accessible`), from the npm package of
services/gateway/console-assets (installed by `make console-assets`), and every page's
Content-Security-Policy violations fail the test that caused them. Screenshots go to a
temporary folder, or to docs/console/ when KILN_CONSOLE_SCREENSHOTS=1 (how docs/console.md's
pictures are made)."""

import json
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Playwright,
    ViewportSize,
    sync_playwright,
)

from tests.stack_support import load_env_file

REPO = Path(__file__).resolve().parents[3]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
AXE = REPO / "services/gateway/console-assets/node_modules/axe-core/axe.min.js"
DOCS_SHOTS = REPO / "docs" / "console"
# Generous: the machine is shared and slow; nothing here measures time.
WAIT_MS = 90_000
DESKTOP: ViewportSize = {"width": 1280, "height": 900}
PHONE: ViewportSize = {"width": 390, "height": 844}


@dataclass(frozen=True)
class ConsoleAccount:
    id: str
    email: str
    password: str


@dataclass
class ConsoleSite:
    base: str  # http://127.0.0.1:<gateway port>
    api_url: str
    admin_token: str
    shots: Path
    stack_root: Path

    def url(self, path: str) -> str:
        return self.base + path

    def admin(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.api_url,
            headers={"Authorization": f"Bearer {self.admin_token}"},
            timeout=60,
        )

    def new_account(self, credits: str | None = None) -> ConsoleAccount:
        email = f"console-{uuid.uuid4().hex[:10]}@example.com"
        password = f"pw-{uuid.uuid4().hex}"
        with self.admin() as admin:
            made = admin.post("/admin/accounts", json={"email": email, "password": password})
            assert made.status_code == 201, made.text
            account = ConsoleAccount(made.json()["data"]["id"], email, password)
            if credits is not None:
                granted = admin.post(
                    f"/admin/accounts/{account.id}/credits", json={"amount": credits}
                )
                assert granted.status_code == 200, granted.text
        return account

    def new_key(self, account: ConsoleAccount, sandbox: bool = True) -> dict[str, Any]:
        with self.admin() as admin:
            made = admin.post(
                f"/admin/accounts/{account.id}/keys", json={"name": "api", "sandbox": sandbox}
            )
            assert made.status_code == 201, made.text
            key: dict[str, Any] = made.json()["data"]
            return key

    def shot(self, page: Page, name: str, *, full_page: bool = True) -> None:
        page.screenshot(path=str(self.shots / f"{name}.png"), full_page=full_page)


@pytest.fixture(scope="session")
def console(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> ConsoleSite:
    """The shared test stack's console; KILN_CONSOLE_STACK_DIR names a running stack's folder
    instead (for working on the console without starting a stack per run)."""
    running = os.environ.get("KILN_CONSOLE_STACK_DIR")
    if running:
        stack_root = Path(running)
        stack = load_env_file(stack_root / "demo.env")
    else:
        stack = request.getfixturevalue("stack")
        stack_root = Path(request.getfixturevalue("local_stack").root)
    if os.environ.get("KILN_CONSOLE_SCREENSHOTS") == "1":
        shots = DOCS_SHOTS
        shots.mkdir(parents=True, exist_ok=True)
    else:
        shots = tmp_path_factory.mktemp("console-shots")
    api_url = stack["KILN_API_URL"]
    return ConsoleSite(
        base=api_url.removesuffix("/api/v1"),
        api_url=api_url,
        admin_token=stack["KILN_ADMIN_TOKEN"],
        shots=shots,
        stack_root=stack_root,
    )


# Per module, not per session: while Playwright's sync API runs, its event loop is the
# thread's running loop, and the asyncio tests that come after these would not start.
@pytest.fixture(scope="module")
def playwright_driver() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright_driver: Playwright) -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make install` installs Debian's chromium")
    launched = playwright_driver.chromium.launch(
        executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=WAIT_MS
    )
    yield launched
    launched.close()


@dataclass
class Watched:
    """A browser context whose pages report CSP violations and every request they make."""

    context: BrowserContext
    csp_violations: list[str] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)

    def page(self) -> Page:
        page = self.context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.set_default_navigation_timeout(WAIT_MS)

        def on_console(message: ConsoleMessage) -> None:
            if "Content Security Policy" in message.text:
                self.csp_violations.append(message.text)

        page.on("console", on_console)
        page.on(
            "request",
            lambda request: self.requests.append(
                {
                    "url": request.url,
                    "headers": request.all_headers(),
                    "body": request.post_data_buffer or b"",
                }
            ),
        )
        return page


@pytest.fixture
def browse(browser: Browser) -> Iterator[Any]:
    """`browse(viewport=...)`: a fresh browser context (its own cookies) per call; each one's
    pages must not break the Content-Security-Policy."""
    opened: list[Watched] = []

    def open_context(viewport: ViewportSize | None = None, **options: Any) -> Watched:
        context = browser.new_context(viewport=viewport or DESKTOP, **options)
        watched = Watched(context)
        opened.append(watched)
        return watched

    yield open_context
    violations = [v for w in opened for v in w.csp_violations]
    for watched in opened:
        watched.context.close()
    assert violations == [], f"Content-Security-Policy violations: {violations}"


def sign_in(page: Page, site: ConsoleSite, account: ConsoleAccount) -> None:
    page.goto(site.url("/console/login"))
    page.fill("#email", account.email)
    page.fill("#password", account.password)
    page.click("form button[type=submit]")
    page.wait_for_url(site.url("/console/"))


def operator_sign_in(page: Page, site: ConsoleSite) -> None:
    page.goto(site.url("/console/admin/login"))
    page.fill("#admin_token", site.admin_token)
    page.click("form button[type=submit]")
    page.wait_for_url(site.url("/console/admin/accounts"))


def accessible(page: Page) -> None:
    """axe-core finds no serious or critical violation on the page as it is now."""
    if not AXE.exists():
        pytest.fail(f"{AXE} is missing: run `make console-assets` (npm ci)")
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        # Runtime.evaluate: not subject to the page's CSP (the page itself admits no inline
        # script, and axe is a test tool, not part of the console).
        page.evaluate(AXE.read_text() + "\n;undefined")
    violations = page.evaluate(
        """async () => {
            const result = await axe.run(document, {resultTypes: ["violations"]});
            return result.violations.map((v) => ({
                id: v.id, impact: v.impact, help: v.help,
                nodes: v.nodes.slice(0, 5).map((n) => n.target.join(" ")),
            }));
        }"""
    )
    serious = [v for v in violations if v["impact"] in ("serious", "critical")]
    assert serious == [], f"axe on {page.url}:\n{json.dumps(serious, indent=2)}"


@dataclass
class Hook:
    headers: dict[str, str]
    body: bytes


@dataclass
class HookReceiver:
    """A webhook receiver of the test's own (loopback, which the test stack admits): 204."""

    url: str = ""
    received: list[Hook] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def hooks(self) -> list[Hook]:
        with self.lock:
            return list(self.received)


@pytest.fixture
def hook_receiver() -> Iterator[HookReceiver]:
    receiver = HookReceiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            with receiver.lock:
                receiver.received.append(
                    Hook({k.lower(): v for k, v in self.headers.items()}, body)
                )
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/console"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield receiver
    server.shutdown()
    server.server_close()
