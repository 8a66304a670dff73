"""Nothing lost, nothing charged twice, under load (issue 11, item 8).

On a stack of its own: 1200 jobs from four accounts (live speech jobs, more than the accounts'
credits pay for, and sandbox jobs, a fifth of them failing) offered at 100 jobs/s, each client
retrying its POST with the same Idempotency-Key until it gets an answer, while every service is
SIGKILLed at random and restarted and the broker is restarted once. Afterwards:

- every accepted job is final, and no Idempotency-Key made two jobs nor any job exist that no
  answer named (a gateway killed mid-request leaves its client the one job its request made),
  but for one refused job per submission answered by a 402 alone (a 402 names no job);
- every account's balance is its grants minus the prices of its completed live jobs, nothing is
  reserved, and billing's own ledger check is clean;
- every final job's webhook came, of its final type, once (one webhook-id per job).

`KILN_CHAOS_SEED` replays a run's random moments (the seed is printed).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from kiln_billing.verify import verify_ledger
from kiln_runtime.catalog import load_catalog
from kiln_runtime.money import format_credits, parse_credits
from tests.stack_support import DATABASES, RunningStack, started_stack

pytestmark = pytest.mark.e2e

JOBS = int(os.environ.get("KILN_CHAOS_JOBS", "1200"))
RATE = 100.0  # jobs offered per second
ACCOUNTS = 4
LIVE_SHARE = 0.2
LIVE_MODEL = "kiln/text-to-speech"
PRICE = load_catalog().price_millicredits(LIVE_MODEL, {"text": "hi"}, False)
FINAL = {"completed", "failed", "canceled"}
SERVICES = ("gateway", "billing", "scheduler", "inference", "notifier")
ENV = {
    # The pipeline, not the guards, is what is tested.
    "KILN_RATE_LIMIT_SANDBOX_CREATE": "100000000",
    "KILN_RATE_LIMIT_SANDBOX_READ": "100000000",
    "KILN_RATE_LIMIT_LIVE_CREATE": "100000000",
    "KILN_RATE_LIMIT_LIVE_READ": "100000000",
    "KILN_ACCOUNT_CONCURRENCY_LIMIT": "64",
    "KILN_POOL_CAPACITY": '{"sandbox": 64, "cpu-speech": 4}',
    # A killed member's partitions move on soon; a killed writer's outbox rows soon too.
    "KILN_KAFKA_SESSION_TIMEOUT_S": "6",
    "KILN_KAFKA_HEARTBEAT_INTERVAL_S": "1",
    "KILN_OUTBOX_LEASE_S": "4",
    # A delivery cut short by a killed notifier is due again soon.
    "KILN_DELIVERY_TIMEOUT_S": "4",
    "KILN_DELIVERY_LEASE_S": "6",
    "KILN_RETRY_SCHEDULE_S": "[1, 2, 4, 8, 16]",
    "KILN_DECISION_WAIT_S": "2",
}


def log(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", flush=True)


@pytest.fixture(scope="module", params=DATABASES)
def chaos_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningStack]:
    """A stack on SQLite files, then one on PostgreSQL (every service handed a `postgresql://`
    database of a cluster of the stack's own)."""
    root = tmp_path_factory.mktemp("kiln-chaos")
    started = time.monotonic()
    with started_stack(
        root, sandbox_delay_ms=150, extra_env=ENV, database=request.param
    ) as running:
        log(f"stack on {request.param} up in {time.monotonic() - started:.1f} s")
        yield running


# --------------------------------------------------------------------------- webhook receiver


@dataclass
class Webhooks:
    url: str = ""
    by_job: dict[str, list[tuple[str, str]]] = field(default_factory=lambda: defaultdict(list))
    lock: threading.Lock = field(default_factory=threading.Lock)


def receive_webhooks() -> tuple[Webhooks, ThreadingHTTPServer]:
    hooks = Webhooks()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            import json

            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            payload = json.loads(body)
            with hooks.lock:
                hooks.by_job[payload["data"]["id"]].append(
                    (payload["type"], self.headers.get("webhook-id", ""))
                )
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    hooks.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return hooks, server


# --------------------------------------------------------------------------- accounts, plan


@dataclass
class Tenant:
    account_id: str
    live_key: str
    sandbox_key: str
    granted: int


def new_tenant(running: RunningStack, credits: str) -> Tenant:
    api = running.env["KILN_API_URL"]
    admin = {"Authorization": f"Bearer {running.env['KILN_ADMIN_TOKEN']}"}
    with httpx.Client(base_url=api, headers=admin, timeout=60) as client:
        account = client.post(
            "/admin/accounts",
            json={"email": f"chaos-{uuid.uuid4().hex[:8]}@kiln.local", "password": "x" * 16},
        ).json()["data"]
        client.post(f"/admin/accounts/{account['id']}/credits", json={"amount": credits})
        keys = [
            client.post(
                f"/admin/accounts/{account['id']}/keys",
                json={"name": kind, "sandbox": kind == "sandbox"},
            ).json()["data"]["secret"]
            for kind in ("live", "sandbox")
        ]
    return Tenant(account["id"], keys[0], keys[1], parse_credits(credits))


@dataclass
class Submission:
    tenant: Tenant
    live: bool
    body: dict[str, Any]
    key: str = field(default_factory=lambda: f"chaos-{uuid.uuid4().hex}")
    answers: list[tuple[int, str]] = field(default_factory=list)  # (status, job id or "")
    tries: int = 0

    @property
    def job_ids(self) -> set[str]:
        return {job for _status, job in self.answers if job}


def plan(tenants: list[Tenant], rng: random.Random, webhook_url: str) -> list[Submission]:
    out = []
    for index in range(JOBS):
        tenant = tenants[index % len(tenants)]
        live = rng.random() < LIVE_SHARE
        if live:
            body: dict[str, Any] = {"model": LIVE_MODEL, "input": {"text": "hi"}}
        else:
            outcome = "failed" if rng.random() < 0.2 else "completed"
            body = {
                "model": "kiln/prompt-to-image",
                "input": {"prompt": "chaos", "width": 64, "height": 64},
                "sandbox": {"outcome": outcome},
            }
        body["webhook_url"] = webhook_url
        out.append(Submission(tenant, live, body))
    return out


# --------------------------------------------------------------------------- the load


async def submit_all(api: str, submissions: list[Submission], give_up_s: float) -> None:
    """Each submission at its due time (RATE per second); a POST that gets no answer (the
    gateway is down or died mid-request) or a 5xx is sent again with the same key. (aiohttp:
    httpx's connection pool spends quadratic time with a thousand requests queued.)"""
    started = time.monotonic()
    connector = aiohttp.TCPConnector(limit=256)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(index: int, s: Submission) -> None:
            await asyncio.sleep(max(started + index / RATE - time.monotonic(), 0.0))
            key = s.tenant.live_key if s.live else s.tenant.sandbox_key
            headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": s.key}
            deadline = time.monotonic() + give_up_s
            while time.monotonic() < deadline:
                s.tries += 1
                try:
                    async with session.post(f"{api}/jobs", json=s.body, headers=headers) as got:
                        status = got.status
                        data = await got.json(content_type=None) if status == 202 else None
                except (aiohttp.ClientError, TimeoutError, ValueError):
                    await asyncio.sleep(0.5)
                    continue
                if status >= 500:
                    await asyncio.sleep(0.5)
                    continue
                s.answers.append((status, str(data["data"]["id"]) if data else ""))
                if status in (202, 402):
                    return
                await asyncio.sleep(0.5)  # 409 or another 4xx: try again, same key

        await asyncio.gather(*(one(i, s) for i, s in enumerate(submissions)))


@dataclass
class Chaos:
    kills: list[tuple[float, str]] = field(default_factory=list)
    broker_restarts: list[float] = field(default_factory=list)


def run_chaos(running: RunningStack, rng: random.Random, window_s: float) -> Chaos:
    """Every service SIGKILLed (and restarted) at a random moment of the window, two of them
    twice, and, on a thread of its own, the broker killed and restarted once."""
    local = running.local
    chaos = Chaos()
    started = time.monotonic()
    broker_at = rng.uniform(window_s * 0.3, window_s * 0.7)
    broker_down_s = rng.uniform(1.0, 3.0)

    def restart_broker() -> None:
        time.sleep(max(started + broker_at - time.monotonic(), 0.0))
        local.restart_kafka(down_s=broker_down_s, sig=signal.SIGKILL)
        chaos.broker_restarts.append(time.monotonic() - started)
        log("broker restarted")

    broker = threading.Thread(target=restart_broker, name="broker-chaos")
    broker.start()
    victims = list(SERVICES) + rng.sample(SERVICES, 2)
    rng.shuffle(victims)
    moments = sorted(rng.uniform(0.5, window_s) for _ in victims)
    for at, victim in zip(moments, victims, strict=True):
        time.sleep(max(started + at - time.monotonic(), 0.0))
        local.stop_service(victim, signal.SIGKILL)
        chaos.kills.append((time.monotonic() - started, victim))
        log(f"{victim} SIGKILLed")
        time.sleep(rng.uniform(0.3, 1.5))
        local.start_service(victim)
    broker.join()
    return chaos


# --------------------------------------------------------------------------- reading back


def account_jobs(running: RunningStack, tenant: Tenant) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    api = running.env["KILN_API_URL"]
    for key in (tenant.live_key, tenant.sandbox_key):
        page = 1
        with httpx.Client(base_url=api, timeout=60) as client:
            while True:
                answer = client.get(
                    "/jobs",
                    params={"page": page, "per_page": 100},
                    headers={"Authorization": f"Bearer {key}"},
                )
                answer.raise_for_status()
                body = answer.json()
                jobs += [j for j in body["data"] if (j["sandbox"] == (key == tenant.sandbox_key))]
                if page >= body["pagination"]["total_pages"]:
                    break
                page += 1
    return jobs


def wait_until(what: str, check: Any, timeout_s: float, every_s: float = 2.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            found = check()
        except httpx.HTTPError:
            found = None
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(every_s)


# --------------------------------------------------------------------------- the test


def test_every_job_once_every_credit_counted_while_everything_dies(
    chaos_stack: RunningStack,
) -> None:
    running = chaos_stack
    seed = int(os.environ.get("KILN_CHAOS_SEED") or random.randrange(1 << 32))
    log(f"seed {seed} (KILN_CHAOS_SEED={seed} replays these moments)")
    rng = random.Random(seed)
    hooks, server = receive_webhooks()
    live_jobs_each = int(JOBS * LIVE_SHARE / ACCOUNTS)
    # Credits for about two thirds of each account's live jobs: the rest get 402.
    credits = format_credits(PRICE * (live_jobs_each * 2 // 3))
    tenants = [new_tenant(running, credits) for _ in range(ACCOUNTS)]
    submissions = plan(tenants, rng, hooks.url)
    window_s = JOBS / RATE
    chaos_box: dict[str, Any] = {}

    def chaos_thread() -> None:
        try:
            chaos_box["chaos"] = run_chaos(running, rng, window_s)
        except BaseException as exc:  # reported below
            chaos_box["error"] = exc

    started = time.monotonic()
    thread = threading.Thread(target=chaos_thread, name="chaos")
    thread.start()
    try:
        asyncio.run(submit_all(running.env["KILN_API_URL"], submissions, give_up_s=240.0))
    finally:
        thread.join()
    if "error" in chaos_box:
        raise chaos_box["error"]
    chaos: Chaos = chaos_box["chaos"]
    offered_in = time.monotonic() - started
    log(
        f"{JOBS} submissions answered in {offered_in:.1f} s; kills {chaos.kills}, broker "
        f"restarts {chaos.broker_restarts}"
    )
    running.local.wait_ready()
    try:
        unanswered = [
            s.key for s in submissions if not s.answers or s.answers[-1][0] not in (202, 402)
        ]
        last = Counter(s.answers[-1][0] if s.answers else "none" for s in submissions)
        log(f"last answers: {dict(last)}; tries: {Counter(min(s.tries, 5) for s in submissions)}")
        assert not unanswered, f"{len(unanswered)} submissions never got a final answer"
        retried = sum(1 for s in submissions if s.tries > 1)
        log(f"{retried} submissions were sent more than once")
        # One key, at most one job.
        twice = [s.key for s in submissions if len(s.job_ids) > 1]
        assert not twice, f"keys that made two jobs: {twice[:5]}"
        statuses = Counter(s.answers[-1][0] for s in submissions)
        log(f"answers: {dict(statuses)}")
        assert statuses[202] > JOBS * 0.5

        def every_job_final() -> dict[str, list[dict[str, Any]]] | None:
            jobs = {t.account_id: account_jobs(running, t) for t in tenants}
            open_jobs = [j for js in jobs.values() for j in js if j["status"] not in FINAL]
            return None if open_jobs else jobs

        jobs_by_account = wait_until("every job is final", every_job_final, timeout_s=600)
        log(f"every job final {time.monotonic() - started:.1f} s after the first submission")
        named = {job for s in submissions for job in s.job_ids}
        for tenant in tenants:
            mine = jobs_by_account[tenant.account_id]
            ids = [j["id"] for j in mine]
            assert len(ids) == len(set(ids))
            # A 402 names no job (its body is the error), but its job exists, failed: each
            # submission answered only by 402s accounts for one job no answer named, no more.
            refused = sum(
                1
                for s in submissions
                if s.tenant is tenant and not s.job_ids and any(a[0] == 402 for a in s.answers)
            )
            stranger = [j for j in mine if j["id"] not in named]
            assert len(stranger) == refused, (
                f"{len(stranger)} jobs no answer named, {refused} answered by a 402 alone: "
                f"{sorted(j['id'] for j in stranger)[:5]}"
            )
            assert all(
                j["status"] == "failed" and (j["error"] or {}).get("code") == "INSUFFICIENT_CREDITS"
                for j in stranger
            ), [j for j in stranger if j["status"] != "failed"][:3]
            accepted = {job for s in submissions if s.tenant is tenant for job in s.job_ids}
            assert accepted <= set(ids), "an accepted job is missing"

        # Every credit accounted for: grants minus the completed live jobs.
        def settled() -> dict[str, dict[str, Any]] | None:
            usage = {}
            for tenant in tenants:
                answer = httpx.get(
                    f"{running.env['KILN_API_URL']}/usage",
                    headers={"Authorization": f"Bearer {tenant.live_key}"},
                    timeout=30,
                )
                answer.raise_for_status()
                usage[tenant.account_id] = answer.json()["data"]
            return usage if all(u["reserved"] == "0" for u in usage.values()) else None

        usage = wait_until("nothing stays reserved", settled, timeout_s=120)
        for tenant in tenants:
            completed_live = [
                j
                for j in jobs_by_account[tenant.account_id]
                if not j["sandbox"] and j["status"] == "completed"
            ]
            assert all(j["cost"] == format_credits(PRICE) for j in completed_live)
            expected = tenant.granted - PRICE * len(completed_live)
            assert parse_credits(usage[tenant.account_id]["balance"]) == expected, (
                tenant.account_id,
                usage[tenant.account_id],
                len(completed_live),
            )
        report = verify_ledger(running.local.database_url("billing"))
        assert report.ok, report.render()
        log(report.render())

        # Every final state reached its webhook, once.
        every = [j for js in jobs_by_account.values() for j in js]

        def webhooked() -> bool:
            with hooks.lock:
                return all(hooks.by_job.get(j["id"]) for j in every)

        wait_until("every job's webhook came", webhooked, timeout_s=300)
        with hooks.lock:
            for job in every:
                got = hooks.by_job[job["id"]]
                assert {kind for kind, _ in got} == {f"job.{job['status']}"}, (job["id"], got)
                assert len({webhook_id for _, webhook_id in got}) == 1, (job["id"], got)
        kinds = Counter(("live" if not j["sandbox"] else "sandbox", j["status"]) for j in every)
        log(f"jobs: {dict(sorted(kinds.items()))}")
    finally:
        server.shutdown()


# On SQLite only: the test above kills the gateway mid-request under load on PostgreSQL as well
# (every key at most one job, every job named by an answer), and this one costs half a minute.
@pytest.mark.parametrize("chaos_stack", ["sqlite"], indirect=True)
def test_a_retry_after_the_gateway_died_mid_request_gets_that_requests_job(
    chaos_stack: RunningStack, tmp_path: Path
) -> None:
    """Billing is stopped, so the gateway waits for a decision that does not come; it is killed
    while it waits (its request made the job). The retry, same key, on the restarted gateway,
    gets that job at once, never a 409; when billing is back the job runs."""
    running = chaos_stack
    local = running.local
    api = running.env["KILN_API_URL"]
    key = running.env["KILN_DEMO_SANDBOX_KEY"]
    body = {"model": "kiln/prompt-to-image", "input": {"prompt": "once"}}
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": f"mid-{uuid.uuid4().hex}"}

    def jobs_made() -> int:
        counted = httpx.get(
            f"{api}/jobs/count", headers={"Authorization": f"Bearer {key}"}, timeout=30
        )
        return int(counted.json()["data"]["count"])

    # The gateway waits up to 60 s for billing's decision here (2 s in the chaos stack), so
    # that it is killed in that wait however loaded the machine is.
    local.extra_env["KILN_DECISION_WAIT_S"] = "60"
    local.stop_service("gateway", signal.SIGKILL)
    local.start_service("gateway")
    local.wait_ready(["gateway"])
    local.stop_service("billing", signal.SIGKILL)
    try:
        result: dict[str, Any] = {}
        before = jobs_made()

        def first() -> None:
            try:
                result["answer"] = httpx.post(f"{api}/jobs", json=body, headers=headers, timeout=30)
            except httpx.HTTPError as exc:
                result["error"] = exc

        thread = threading.Thread(target=first)
        thread.start()
        # Killed once the job is written, while the gateway waits for billing's decision:
        # not after a fixed second, which a loaded machine can spend before the write.
        deadline = time.monotonic() + 30
        while jobs_made() == before:
            assert time.monotonic() < deadline, "the gateway did not write the job"
            time.sleep(0.05)
        local.stop_service("gateway", signal.SIGKILL)
        thread.join()
        assert "error" in result, "the first request died with its gateway"
        local.extra_env.pop("KILN_DECISION_WAIT_S")
        local.start_service("gateway")
        local.wait_ready(["gateway"])
        retry = httpx.post(f"{api}/jobs", json=body, headers=headers, timeout=30)
        assert retry.status_code == 202, retry.text
        assert retry.headers.get("Idempotent-Replayed") == "true"
        job = retry.json()["data"]
        assert job["status"] == "pending"
        again = httpx.post(f"{api}/jobs", json=body, headers=headers, timeout=30)
        assert again.json()["data"]["id"] == job["id"]
    finally:
        if local.extra_env.pop("KILN_DECISION_WAIT_S", None) is not None:
            # failed before the kill: the rest of the module gets the stack's gateway back
            local.stop_service("gateway", signal.SIGKILL)
            local.start_service("gateway")
            local.wait_ready(["gateway"])
        local.start_service("billing")
        local.wait_ready(["billing"])

    def done() -> dict[str, Any] | None:
        found = httpx.get(
            f"{api}/jobs/{job['id']}", headers={"Authorization": f"Bearer {key}"}, timeout=30
        ).json()["data"]
        return found if found["status"] in FINAL else None

    assert wait_until("the job runs once billing is back", done, timeout_s=120)["status"] == (
        "completed"
    )
