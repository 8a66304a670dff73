"""The Kiln stack that benchmarks run against: deploy/local/stack.py's LocalStack in a folder of
its own on free ports, with the limits that protect a shared deployment lifted (rate limits,
per-account concurrency) so that the pipeline itself is what gets measured, and several bench
accounts: jobs are keyed by account on 6 partitions, so one account would put every job on one
partition and one consumer of each group (12 accounts cover the 6 partitions with a margin for
hash collisions)."""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.receiver import WebhookReceiver
from tests.stack_support import LocalStack, StackPorts

# Settings of every bench stack (and why).
BENCH_ENV: dict[str, str] = {
    # The per-key limits (300 sandbox jobs a minute) would be what the submit bench measures.
    "KILN_RATE_LIMIT_SANDBOX_CREATE": "100000000",
    "KILN_RATE_LIMIT_SANDBOX_READ": "100000000",
    "KILN_RATE_LIMIT_LIVE_CREATE": "100000000",
    "KILN_RATE_LIMIT_LIVE_READ": "100000000",
    # Fairness limits are for many tenants; the bench accounts may fill the sandbox pool.
    "KILN_ACCOUNT_CONCURRENCY_LIMIT": "64",
    "KILN_POOL_CAPACITY": json.dumps({"sandbox": 64}),
    "KILN_WORKER_CONCURRENCY": "64",
    # Every bench webhook goes to one receiver URL; an endpoint's default limit of 4 attempts in
    # flight (which keeps a slow tenant from holding the sender) would be what the bench
    # measured. The Celery baseline posts from its 8 worker threads with no such limit.
    "KILN_MAX_CONCURRENT_PER_ENDPOINT": "64",
    "KILN_LOG_LEVEL": "INFO",
}
BENCH_ACCOUNTS = 12
BENCH_CREDITS = "1000000"


@dataclass(frozen=True)
class BenchAccount:
    id: str
    sandbox_key: str
    live_key: str


@dataclass
class KilnBenchStack:
    """`stack = KilnBenchStack(root); stack.up(); ... stack.accounts ... stack.down()`."""

    root: Path
    instances: Mapping[str, int] | None = None
    extra_env: Mapping[str, str] | None = None
    echo: Callable[[str], None] = print
    accounts_wanted: int = BENCH_ACCOUNTS

    def __post_init__(self) -> None:
        env = {**BENCH_ENV, **(self.extra_env or {})}
        options: dict[str, Any] = {"echo": self.echo}
        if self.instances:
            options["instances"] = dict(self.instances)
        self.local = LocalStack(
            root=self.root, ports=StackPorts.free(), sandbox_delay_ms=0, extra_env=env, **options
        )
        self.accounts: list[BenchAccount] = []

    @property
    def api_url(self) -> str:
        return str(self.local.api_url)

    @property
    def jobs_url(self) -> str:
        return f"{self.api_url}/jobs"

    @property
    def triton_grpc_url(self) -> str:
        return f"127.0.0.1:{self.local.ports.triton_grpc}"

    @property
    def admin_token(self) -> str:
        return str(self.local.secrets()["KILN_ADMIN_TOKEN"])

    def up(self) -> None:
        self.local.up()
        self.accounts = self._make_accounts(self.accounts_wanted)

    def down(self) -> None:
        # The bench's stacks are thrown away: killed at once, not shut down (Triton alone takes
        # its whole 15 s grace to unload the sandbox's instances). The logs stay in the folder.
        self.local.down(discard=True)

    def _make_accounts(self, count: int) -> list[BenchAccount]:
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        made: list[BenchAccount] = []
        with httpx.Client(base_url=self.api_url, headers=headers, timeout=30.0) as admin:
            for index in range(count):
                email = f"bench-{index}-{self.local.ports.gateway}@kiln.local"
                account = _data(
                    admin.post(
                        "/admin/accounts",
                        json={"email": email, "password": secrets.token_urlsafe(18)},
                    )
                )
                account_id = str(account["id"])
                _data(
                    admin.post(
                        f"/admin/accounts/{account_id}/credits",
                        json={"amount": BENCH_CREDITS, "reason": "bench"},
                    )
                )
                keys = [
                    str(
                        _data(
                            admin.post(
                                f"/admin/accounts/{account_id}/keys",
                                json={"name": f"bench {kind}", "sandbox": kind == "sandbox"},
                            )
                        )["secret"]
                    )
                    for kind in ("sandbox", "live")
                ]
                made.append(BenchAccount(account_id, sandbox_key=keys[0], live_key=keys[1]))
        return made


@contextlib.contextmanager
def tool_stack(workdir: str, prefix: str) -> Iterator[tuple[KilnBenchStack, WebhookReceiver]]:
    """A running bench stack and a webhook receiver for a working tool (`bench.cpu_per_job`,
    `bench.hop_latency`): in `workdir`, or a new temporary folder named `prefix…`, removed
    afterwards (a minute at 150 jobs/s leaves gigabytes of results); both are stopped on the
    way out."""
    folder = workdir or tempfile.mkdtemp(prefix=prefix)
    stack = KilnBenchStack(Path(folder) / "kiln")
    receiver = WebhookReceiver().start()
    try:
        stack.up()
        yield stack, receiver
    finally:
        receiver.stop()
        stack.down()
        if not workdir:
            shutil.rmtree(folder, ignore_errors=True)


def _data(response: httpx.Response) -> Any:
    if response.status_code // 100 != 2:
        raise RuntimeError(
            f"{response.request.method} {response.request.url} answered "
            f"{response.status_code}: {response.text[:300]}"
        )
    return response.json()["data"]


def sandbox_job(delay_s: float = 0.0, webhook_url: str = "") -> dict[str, object]:
    """The body of a sandbox job that takes `delay_s` in the model (0: as fast as it goes)."""
    body: dict[str, object] = {
        "model": "kiln/prompt-to-image",
        "input": {"prompt": "bench", "width": 64, "height": 64},
        "sandbox": {"delay_s": delay_s},
    }
    if webhook_url:
        body["webhook_url"] = webhook_url
    return body
