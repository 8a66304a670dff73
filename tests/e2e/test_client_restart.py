"""A submit that the SDK retries across a gateway restart makes exactly one job.

1. The gateway is down when the submit starts: the client retries (connection refused) with
   backoff until the gateway is back, and the job is made once.
2. The gateway dies in the middle of the request, after it recorded the job and before it
   answered: the client retries with the same Idempotency-Key once the gateway is back, and
   must get that job, not a second one (docs/architecture.md, "Job lifecycle").

Both kill the shared stack's gateway (SIGKILL) and start it again.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from kiln_client import Job, Kiln
from tests.e2e.client_support import new_account
from tests.stack_support import LocalStack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

IMAGE = "kiln/prompt-to-image"


class Submit(threading.Thread):
    """`jobs.create` in a thread, counting the HTTP attempts it makes."""

    def __init__(self, kiln: Kiln, attempts: list[httpx.Request]) -> None:
        super().__init__(daemon=True)
        self.kiln = kiln
        self.attempts = attempts
        self.job: Job | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.job = self.kiln.jobs.create(IMAGE, {"prompt": "across a restart"})
        except BaseException as exc:
            self.error = exc


def retrying_client(api_url: str, key: str, attempts: list[httpx.Request]) -> Kiln:
    http = httpx.Client(event_hooks={"request": [attempts.append]})
    # Enough retries (and time) for a gateway restart on a loaded machine.
    return Kiln(key, base_url=api_url, max_retries=60, total_timeout=400, http_client=http)


@pytest.fixture
def gateway_restarts(local_stack: LocalStack) -> Iterator[LocalStack]:
    """Whatever a test does to the gateway, it runs again (with its usual settings) after."""
    saved = dict(local_stack.extra_env)
    try:
        yield local_stack
    finally:
        changed = local_stack.extra_env != saved
        local_stack.extra_env.clear()
        local_stack.extra_env.update(saved)
        if changed or not local_stack.service_ready("gateway"):
            local_stack.stop_service("gateway", signal.SIGKILL)
        local_stack.start_service("gateway")  # no-op when it runs
        local_stack.start_service("billing")
        local_stack.wait_ready(["gateway", "billing"])


def restart_gateway(local: LocalStack) -> None:
    local.stop_service("gateway", signal.SIGKILL)
    local.start_service("gateway")
    local.wait_ready(["gateway"])


def only_jobs(api_url: str, key: str) -> list[Any]:
    reader = Kiln(key, base_url=api_url)
    return [job.raw for job in reader.jobs.list()]


def test_submit_while_the_gateway_is_down_makes_one_job(
    stack: dict[str, str], gateway_restarts: LocalStack
) -> None:
    local = gateway_restarts
    account = new_account(stack)
    attempts: list[httpx.Request] = []
    local.stop_service("gateway", signal.SIGKILL)
    submit = Submit(retrying_client(stack["KILN_API_URL"], account.sandbox_key, attempts), attempts)
    submit.start()
    deadline = time.monotonic() + 60
    while len(attempts) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(attempts) >= 2, "the client did not retry the refused connection"
    local.start_service("gateway")
    local.wait_ready(["gateway"])
    submit.join(timeout=400)
    assert submit.error is None, submit.error
    assert submit.job is not None
    assert len({a.headers["Idempotency-Key"] for a in attempts}) == 1
    jobs = only_jobs(stack["KILN_API_URL"], account.sandbox_key)
    assert [j["id"] for j in jobs] == [submit.job.id]


def test_submit_retried_after_the_gateway_died_mid_request_makes_one_job(
    stack: dict[str, str], gateway_restarts: LocalStack
) -> None:
    local = gateway_restarts
    account = new_account(stack)
    # Billing stopped: the gateway commits the job, then waits for billing's decision (here
    # up to 60 s) before it answers; it is killed in that wait.
    local.extra_env["KILN_DECISION_WAIT_S"] = "60"
    restart_gateway(local)
    local.stop_service("billing", signal.SIGKILL)
    attempts: list[httpx.Request] = []
    submit = Submit(retrying_client(stack["KILN_API_URL"], account.sandbox_key, attempts), attempts)
    submit.start()
    reader = Kiln(account.sandbox_key, base_url=stack["KILN_API_URL"])
    deadline = time.monotonic() + 60
    while reader.jobs.count() == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert reader.jobs.count() == 1, "the gateway did not record the job"
    assert submit.is_alive(), "the gateway answered before it could be killed"
    local.stop_service("gateway", signal.SIGKILL)
    local.extra_env.pop("KILN_DECISION_WAIT_S")
    local.start_service("gateway")
    local.wait_ready(["gateway"])
    local.start_service("billing")
    local.wait_ready(["billing"])
    submit.join(timeout=400)
    assert not submit.is_alive()
    assert len(attempts) >= 2
    assert len({a.headers["Idempotency-Key"] for a in attempts}) == 1
    jobs = only_jobs(stack["KILN_API_URL"], account.sandbox_key)
    assert len(jobs) == 1, f"{len(jobs)} jobs from one submit"
    assert submit.error is None, f"the retried submit failed: {submit.error!r}"
    assert submit.job is not None and submit.job.id == jobs[0]["id"]
