"""Billing on a whole stack of its own, over the public HTTP API:

- 50 concurrent submissions from an account that holds credits for 10 jobs: exactly 10 are
  accepted (202) and 40 refused with 402 INSUFFICIENT_CREDITS;
- the crash test: 300 jobs (live and sandbox, some failing, some canceled when the API can)
  submitted while billing is killed with SIGKILL at random moments, four times, and the Kafka
  broker is restarted once. Afterwards every job is final, and billing's own database (read
  directly, as only this test may) shows for every account granted = available + reserved +
  spent, every completed job captured exactly once, every failed or canceled one released
  exactly once, and agrees job by job with the gateway's job list.

Both run on a stack on SQLite files and again on one on PostgreSQL (conftest.postgres_stack).

`KILN_CHAOS_SEED` replays a run's random moments (the seed is printed).
"""

from __future__ import annotations

import os
import queue
import random
import signal
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from kiln_billing import repository
from kiln_billing.tables import MESSAGING
from kiln_billing.verify import LedgerReport, check_ledger
from kiln_runtime.catalog import load_catalog
from kiln_runtime.db import make_sync_engine
from kiln_runtime.money import format_credits, parse_credits
from tests.e2e.conftest import BILLING_STACK_ENV, throwaway_stack, wait_until
from tests.kafka_topics import distinct_events
from tests.stack_support import DATABASES, RunningStack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

IMAGE, SPEECH = "kiln/prompt-to-image", "kiln/text-to-speech"
FINAL = ("completed", "failed", "canceled")
CATALOG = load_catalog()
PRICES = {m.id: m.price_millicredits for m in CATALOG.models}

# How the gateway decides among jobs and how long it waits for billing's answer: long enough
# that 50 decisions at once come back inside the request on a busy 2-core machine.
STACK_ENV = BILLING_STACK_ENV


def log(message: str) -> None:
    print(f"[billing-chaos {time.strftime('%H:%M:%S')}] {message}", flush=True)


@pytest.fixture(scope="module", params=DATABASES)
def billing_stack(request: pytest.FixtureRequest) -> Iterator[RunningStack]:
    """A stack of its own on SQLite files; then the PostgreSQL stack that the happy path
    shares (billing's ledger in a `postgresql://` database), whose settings include these."""
    if request.param == "postgresql":
        yield request.getfixturevalue("postgres_stack")
    else:
        yield from throwaway_stack("kiln-billing-stack-", extra_env=STACK_ENV)


# --------------------------------------------------------------------------------- API helpers


@dataclass
class Tenant:
    account_id: str
    live_key: str
    sandbox_key: str
    granted: int  # millicredits


def client(running: RunningStack, token: str, timeout_s: float = 60) -> httpx.Client:
    return httpx.Client(
        base_url=running.demo.api_url,
        headers={"Authorization": f"Bearer {token}"},
        timeout=timeout_s,
    )


def new_tenant(running: RunningStack, name: str, credits: str) -> Tenant:
    with client(running, running.demo.admin_token) as admin:
        made = admin.post(
            "/admin/accounts",
            json={"email": f"{name}-{time.time_ns()}@example.com", "password": "a long passphrase"},
        )
        assert made.status_code // 100 == 2, made.text
        account_id = made.json()["data"]["id"]
        granted = admin.post(
            f"/admin/accounts/{account_id}/credits", json={"amount": credits, "reason": name}
        )
        assert granted.status_code // 100 == 2, granted.text
        assert granted.json()["data"]["booked"] is True, "billing booked the grant in time"
        keys = {}
        for sandbox in (False, True):
            key = admin.post(
                f"/admin/accounts/{account_id}/keys", json={"name": name, "sandbox": sandbox}
            )
            assert key.status_code // 100 == 2, key.text
            keys[sandbox] = key.json()["data"]["secret"]
    return Tenant(account_id, keys[False], keys[True], parse_credits(credits))


def all_jobs(running: RunningStack, tenant: Tenant) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    with client(running, tenant.live_key) as api:
        page = 1
        while True:
            got = api.get("/jobs", params={"page": page, "per_page": 100})
            assert got.status_code == 200, got.text
            body = got.json()
            jobs += body["data"]
            if page >= body["pagination"]["total_pages"]:
                return jobs
            page += 1


def usage(running: RunningStack, tenant: Tenant) -> dict[str, Any]:
    with client(running, tenant.live_key) as api:
        got = api.get("/usage")
        assert got.status_code == 200, got.text
        data: dict[str, Any] = got.json()["data"]
        return data


def log_trouble(running: RunningStack) -> None:
    """Print the last warnings and errors of each component's log (the stack's folder goes away
    after the test; the services do not log job ids)."""
    for path in sorted(running.local.logs_dir.glob("*.log")):
        lines = path.read_text(errors="replace").splitlines()
        noise = ("Unable connect to node", "SandboxFailedError", "SANDBOX_FAILED")
        trouble = [
            line
            for line in lines
            if any(w in line for w in ("WARN", "ERROR", "Error"))
            and not any(n in line for n in noise)
        ]
        for line in trouble[-12:]:
            log(f"{path.stem}: {line[:400]}")


# ----------------------------------------------------------------------- billing's database


@dataclass
class BillingState:
    report: LedgerReport
    charges: dict[str, repository.ChargeRow]
    bookings: dict[str, Counter[str]]
    booked: dict[str, set[int]]
    credit_events: dict[str, Counter[str]]  # job id -> credits.* events billing emitted
    unpublished: int
    books: dict[str, Any]


def billing_database_url(running: RunningStack) -> str:
    url: str = running.local.database_url("billing")
    return url


def read_billing(running: RunningStack) -> BillingState:
    """Billing's ledger in one read snapshot, its outbox (rows not yet acknowledged by Kafka),
    and the credits.* events it published, from the broker (distinct by event id: a copy sent
    again after a crash carries the same id and is dropped by every consumer)."""
    engine = make_sync_engine(billing_database_url(running))
    try:
        with engine.connect() as connection:
            connection.begin()
            report = check_ledger(connection)
            connection.begin()
            if connection.dialect.name == "postgresql":  # one snapshot, as SQLite's WAL gives
                connection.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
            charges = {row.job_id: row for row in repository.all_job_charges(connection)}
            bookings: dict[str, Counter[str]] = defaultdict(Counter)
            booked: dict[str, set[int]] = defaultdict(set)
            for b in repository.job_bookings(connection):
                bookings[b.job_id][b.kind] += 1
                booked[b.job_id].add(b.amount)
            unpublished = len(connection.execute(MESSAGING.outbox.select()).all())
            books = repository.cached_balances(connection)
            connection.rollback()
    finally:
        engine.dispose()
    credit_events: dict[str, Counter[str]] = defaultdict(Counter)
    topics = ("credits.reserved", "credits.rejected", "credits.captured", "credits.released")
    for event in distinct_events(running.local.kafka_bootstrap, topics):
        if event.job_id:
            credit_events[event.job_id][event.type] += 1
    return BillingState(report, charges, bookings, booked, credit_events, unpublished, dict(books))


# ------------------------------------------------------------------------- 50 at once → 10


def test_fifty_concurrent_submissions_for_ten_jobs_get_ten_202_and_forty_402(
    billing_stack: RunningStack,
) -> None:
    tenant = new_tenant(billing_stack, "fifty", "50")  # 10 images at 5 credits
    start = threading.Barrier(50)

    def submit(n: int) -> httpx.Response:
        with client(billing_stack, tenant.live_key) as api:
            start.wait()
            return api.post(
                "/jobs",
                json={
                    "model": IMAGE,
                    "input": {"prompt": f"race {n}", "seed": n, "width": 64, "height": 64},
                },
            )

    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(submit, range(50)))
    codes = Counter(a.status_code for a in answers)
    assert codes == {202: 10, 402: 40}, [a.text for a in answers if a.status_code not in (202, 402)]
    for refused in (a for a in answers if a.status_code == 402):
        assert refused.json()["error"]["code"] == "INSUFFICIENT_CREDITS"
    accepted = {a.json()["data"]["id"] for a in answers if a.status_code == 202}

    def all_done() -> list[dict[str, Any]] | None:
        jobs = all_jobs(billing_stack, tenant)
        return jobs if all(j["status"] in FINAL for j in jobs) else None

    jobs = wait_until("the ten accepted jobs finish", all_done, timeout_s=120)
    assert len(jobs) == 50
    by_status = Counter(j["status"] for j in jobs)
    assert by_status == {"completed": 10, "failed": 40}, by_status
    assert {j["id"] for j in jobs if j["status"] == "completed"} == accepted
    assert all(j["cost"] == "5" for j in jobs if j["id"] in accepted)
    wait_until(
        "the gateway shows the captured balance",
        lambda: (
            usage(billing_stack, tenant)["balance"] == "0"
            and usage(billing_stack, tenant)["reserved"] == "0"
        ),
        timeout_s=30,
    )
    state = read_billing(billing_stack)
    assert state.report.ok, state.report.render()
    assert state.books[tenant.account_id].spent == 50_000
    assert state.books[tenant.account_id].available == 0


# ------------------------------------------------------------------------------- crash test


@dataclass
class Submission:
    tenant: Tenant
    sandbox: bool
    body: dict[str, Any]
    cancel: bool = False
    status_code: int | None = None
    job_id: str | None = None
    problem: str | None = None


@dataclass
class Chaos:
    kills: list[float] = field(default_factory=list)  # seconds after the start
    broker_restarts: list[float] = field(default_factory=list)


def api_can_cancel(running: RunningStack) -> bool:
    """Whether the gateway serves POST /jobs/{id}/cancel (its OpenAPI document says)."""
    for url in (
        f"{running.local.gateway_url}/openapi.json",
        f"{running.demo.api_url}/openapi.json",
    ):
        answer = httpx.get(url, timeout=30)
        if answer.status_code == 200:
            paths = answer.json().get("paths", {})
            return any(p.endswith("/jobs/{job_id}/cancel") for p in paths)
    return False


def plan_submissions(tenants: list[Tenant], rng: random.Random) -> list[Submission]:
    """100 jobs per tenant: 20 live (images and speech, more than its credits pay for; 4 of
    them canceled right away) and 80 sandbox (a quarter of them failing, 5 canceled), the
    cancels only when the API can cancel."""
    plan: list[Submission] = []
    for t in tenants:
        for n in range(20):
            if n % 2:
                body = {"model": SPEECH, "input": {"text": f"chaos {n}"}}
            else:
                body = {
                    "model": IMAGE,
                    "input": {"prompt": f"chaos {n}", "seed": n, "width": 64, "height": 64},
                }
            plan.append(Submission(t, False, body, cancel=n % 5 == 4))
        for n in range(80):
            outcome = "failed" if n % 4 == 0 else "completed"
            model = IMAGE if n % 3 else SPEECH
            body = {
                "model": model,
                "input": {"prompt": f"sandbox {n}"} if model == IMAGE else {"text": f"s {n}"},
                "sandbox": {"outcome": outcome, "delay_s": 2.0 if n % 16 == 1 else 0.2},
            }
            plan.append(Submission(t, True, body, cancel=n % 16 == 1))
    rng.shuffle(plan)
    return plan


def billing_events_processed(running: RunningStack) -> float:
    """How many events the running billing process has handled (its own counter, which a
    restart resets), from its /metrics; 0 when it does not answer."""
    try:
        text = httpx.get(f"{running.local.service_url('billing')}/metrics", timeout=2).text
    except httpx.HTTPError:
        return 0.0
    total = 0.0
    for line in text.splitlines():
        if line.startswith("kiln_events_consumed_total{") and 'service="billing"' in line:
            if 'outcome="processed"' in line:
                total += float(line.rsplit(" ", 1)[1])
    return total


def run_chaos(running: RunningStack, rng: random.Random, started: float) -> Chaos:
    """SIGKILL billing four times, each at a random moment while it is at work (after it has
    handled events since its last start), restarting it 1-3 s later; restart the broker once
    between the second and the third kill, which then comes during the broker's recovery."""
    local = running.local
    chaos = Chaos()

    def at_work() -> None:
        try:
            wait_until(
                "billing handles events again",
                lambda: billing_events_processed(running) > 0,
                timeout_s=90,
                every_s=0.2,
            )
        except AssertionError:  # no traffic left for it: the kill lands on an idle billing
            log("billing handled nothing since its restart (no traffic left?)")
        time.sleep(rng.uniform(0.2, 3.0))

    def kill_billing() -> None:
        at_work()
        local.stop_service("billing", signal.SIGKILL)
        chaos.kills.append(round(time.monotonic() - started, 1))
        log(f"billing SIGKILLed at {chaos.kills[-1]} s")
        time.sleep(rng.uniform(1.0, 3.0))
        local.start_service("billing")

    kill_billing()
    kill_billing()
    at_work()
    chaos.broker_restarts.append(round(time.monotonic() - started, 1))
    log(f"broker restarting at {chaos.broker_restarts[-1]} s")
    local.restart_kafka(down_s=rng.uniform(1.0, 4.0))
    kill_billing()
    kill_billing()
    return chaos


def submit_all(
    running: RunningStack, plan: list[Submission], window_s: float, can_cancel: bool
) -> None:
    """Submit the plan spread over `window_s` seconds from 24 threads."""
    work: queue.Queue[tuple[float, Submission]] = queue.Queue()
    started = time.monotonic()
    for i, submission in enumerate(plan):
        work.put((started + window_s * i / len(plan), submission))

    def worker() -> None:
        clients: dict[str, httpx.Client] = {}
        try:
            while True:
                try:
                    when, s = work.get_nowait()
                except queue.Empty:
                    return
                time.sleep(max(0.0, when - time.monotonic()))
                key = s.tenant.sandbox_key if s.sandbox else s.tenant.live_key
                api = clients.setdefault(key, client(running, key))
                try:
                    answer = api.post("/jobs", json=s.body)
                except httpx.HTTPError as exc:
                    s.problem = f"POST /jobs: {exc!r}"
                    continue
                s.status_code = answer.status_code
                if answer.status_code == 202:
                    s.job_id = answer.json()["data"]["id"]
                    if s.cancel and can_cancel:
                        api.post(f"/jobs/{s.job_id}/cancel")
                elif answer.status_code != 402:
                    s.problem = f"POST /jobs: {answer.status_code} {answer.text[:300]}"
        finally:
            for c in clients.values():
                c.close()

    threads = [threading.Thread(target=worker, name=f"submit-{n}") for n in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_crash_test_billing_killed_and_broker_restarted_under_300_jobs(
    billing_stack: RunningStack,
) -> None:
    running = billing_stack
    seed = int(os.environ.get("KILN_CHAOS_SEED") or random.randrange(1 << 32))
    log(f"seed {seed} (KILN_CHAOS_SEED={seed} replays these moments)")
    rng = random.Random(seed)
    tenants = [new_tenant(running, f"chaos{n}", "40") for n in range(3)]
    can_cancel = api_can_cancel(running)
    plan = plan_submissions(tenants, rng)

    started = time.monotonic()
    chaos_box: dict[str, Any] = {}

    def chaos_thread() -> None:
        try:
            chaos_box["chaos"] = run_chaos(running, rng, started)
        except BaseException as exc:
            chaos_box["error"] = exc

    chaos = threading.Thread(target=chaos_thread, name="chaos")
    chaos.start()
    try:
        submit_all(running, plan, window_s=75.0, can_cancel=can_cancel)
    finally:
        chaos.join()
    submitted_in = time.monotonic() - started
    if "error" in chaos_box:
        raise chaos_box["error"]
    log(f"300 submissions in {submitted_in:.1f} s; chaos: {chaos_box['chaos']}")
    running.local.wait_ready()  # everything is back (billing last restarted seconds ago)
    if can_cancel:
        log("the API can cancel: some sandbox jobs were canceled right after submission")

    problems = [s.problem for s in plan if s.problem]
    assert not problems, problems[:10]
    assert len(chaos_box["chaos"].kills) >= 3 and chaos_box["chaos"].broker_restarts

    # Every job reaches a final state.
    stuck: list[dict[str, Any]] = []

    def every_job_final() -> dict[str, list[dict[str, Any]]] | None:
        jobs = {t.account_id: all_jobs(running, t) for t in tenants}
        stuck[:] = [j for js in jobs.values() for j in js if j["status"] not in FINAL]
        return None if stuck else jobs

    try:
        jobs_by_account = wait_until("every job is final", every_job_final, 180, every_s=2)
    except AssertionError:
        # Which jobs, in which state, and since when: the stack's logs (KILN_KEEP_STACK) say why.
        shown = [(j["id"], j["status"], j.get("created_at"), j.get("updated_at")) for j in stuck]
        log_trouble(running)
        raise AssertionError(f"{len(stuck)} jobs not final within 180 s: {shown[:10]}") from None
    log(f"every job final {time.monotonic() - started:.1f} s after the first submission")
    for tenant in tenants:
        submitted = [s for s in plan if s.tenant is tenant]
        assert len(jobs_by_account[tenant.account_id]) == len(submitted)
        accepted = {s.job_id for s in submitted if s.job_id}
        assert accepted <= {j["id"] for j in jobs_by_account[tenant.account_id]}

    # Billing has settled and published everything.
    def settled() -> BillingState | None:
        state = read_billing(running)
        open_jobs = [r for r in state.charges.values() if r.charge.status == "reserved"]
        return None if open_jobs or state.unpublished else state

    state = wait_until("billing settles every job", settled, timeout_s=60, every_s=1)
    assert state.report.ok, state.report.render()
    log(state.report.render())

    statuses: Counter[str] = Counter()
    for tenant in tenants:
        books = state.books[tenant.account_id]
        assert books.granted == tenant.granted
        assert books.granted == books.available + books.reserved + books.spent
        assert books.reserved == 0
        spent = 0
        for job in jobs_by_account[tenant.account_id]:
            job_id, status = job["id"], job["status"]
            row = state.charges.get(job_id)
            assert row is not None, f"billing never heard of {job_id}"
            assert row.account_id == tenant.account_id
            charge, bookings = row.charge, state.bookings.get(job_id, Counter())
            emitted = state.credit_events.get(job_id, Counter())
            refused = (job.get("error") or {}).get("code") == "INSUFFICIENT_CREDITS"
            kind = "rejected" if status == "failed" and refused else status
            statuses[f"{'sandbox' if job['sandbox'] else 'live'} {kind}"] += 1
            assert charge.sandbox == job["sandbox"]
            price = 0 if job["sandbox"] else PRICES[job["model"]]
            if kind == "completed":
                assert charge.status == "captured", (job, charge)
                assert emitted["credits.captured"] == 1 and emitted["credits.released"] == 0
                if price:
                    assert bookings in (Counter(reserve=1, capture=1), Counter(charge=1)), job_id
                    assert state.booked[job_id] == {price}
                    assert job["cost"] == format_credits(price)
                    spent += price
                else:
                    assert not bookings
            elif kind == "rejected":
                assert charge.status == "rejected", (job, charge)
                assert not bookings and emitted["credits.rejected"] == 1
                assert emitted["credits.reserved"] == 0
            else:  # failed or canceled: released exactly once, never captured
                assert charge.status == "released", (job, charge)
                assert emitted["credits.released"] == 1 and emitted["credits.captured"] == 0
                expected = Counter(reserve=1, release=1) if price else Counter()
                assert bookings == expected, (job_id, bookings)
            assert emitted["credits.reserved"] <= 1 and emitted["credits.rejected"] <= 1
        assert books.spent == spent
        seen = usage(running, tenant)
        assert parse_credits(seen["balance"]) == books.available, seen
        assert seen["reserved"] == "0"
    log(f"jobs: {dict(sorted(statuses.items()))}")
    assert statuses["live completed"] > 0 and statuses["live rejected"] > 0
    assert statuses["sandbox completed"] > 0 and statuses["sandbox failed"] > 0
    metrics = httpx.get(f"{running.local.service_url('billing')}/metrics", timeout=5).text
    for line in metrics.splitlines():
        redelivered = line.startswith("kiln_events_consumed_total{") and (
            'service="billing"' in line and 'outcome="duplicate"' in line
        )
        if redelivered or (line.startswith("kiln_billing_") and "_total{" in line):
            log(f"last billing process: {line}")

    def ledger_gauges() -> dict[str, float]:
        text = httpx.get(f"{running.local.service_url('billing')}/metrics", timeout=5).text
        prefix = 'kiln_billing_ledger_millicredits{book="'
        return {
            line[len(prefix) :].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(prefix)
        }

    totals = {book: float(v) for book, v in state.report.totals.items()}
    wait_until("the ledger gauges", lambda: ledger_gauges() == totals, timeout_s=20)
    starts = (running.local.log_file("billing")).read_text().count("stack.py starts billing")
    assert starts >= 1 + len(chaos_box["chaos"].kills)
    log(f"crash test done in {time.monotonic() - started:.1f} s")
