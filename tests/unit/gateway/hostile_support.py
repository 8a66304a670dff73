"""The real gateway app (`create_app`) on a fresh SQLite file, for hostile-input tests.

The lifespan is not entered, so nothing talks to Kafka: the runtime starts without it
(`start(connect_kafka=False)`: the database, migrated, and the group commit; events a route emits
stay in the outbox table). Requests go through httpx's ASGI transport,
so they pass every middleware, dependency and exception handler of the real app; or, with
`ServedGateway`, through a real uvicorn server on a free local port.
"""

import asyncio
import contextlib
import secrets
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kiln_crypto import make_result_key, new_secrets_key
from kiln_gateway.admin.service import new_account
from kiln_gateway.app import create_app
from kiln_gateway.config import GatewaySettings
from kiln_gateway.ids import new_id
from kiln_gateway.keys.service import new_api_secret, secret_sha256
from kiln_gateway.tables import ApiKey
from kiln_runtime.db import transaction
from tests.stack_support import free_port

ADMIN_TOKEN = "hostile-admin-token-" + "a" * 20


@dataclass
class GatewayUnderTest:
    client: httpx.AsyncClient
    settings: GatewaySettings
    account_id: str
    live_key: str
    sandbox_key: str
    app: Any = None  # the FastAPI app (its state), for tests that reach behind the HTTP edge

    def auth(self, secret: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {secret or self.live_key}"}


@contextlib.asynccontextmanager
async def gateway_under_test(tmp_path: Path, **overrides: Any) -> AsyncIterator[GatewayUnderTest]:
    values: dict[str, Any] = {
        "database_url": f"sqlite+aiosqlite:///{tmp_path}/gateway.db",
        "data_dir": tmp_path,
        "blob_dir": tmp_path / "blobs",
        "admin_token": ADMIN_TOKEN,
        "secrets_keys": new_secrets_key(),
        "decision_wait_s": 0.0,
        "kafka_bootstrap": "127.0.0.1:1",  # never contacted
    }
    values.update(overrides)
    settings = GatewaySettings(**values)
    app = create_app(settings)
    runtime = app.state.gateway.runtime
    await runtime.start(connect_kafka=False)
    sessions = runtime.sessions

    account = new_account(
        f"{secrets.token_hex(4)}@example.com", "hostile", "x", app.state.gateway.keyring
    )
    live, sandbox = new_api_secret(False), new_api_secret(True)
    async with transaction(sessions) as session:
        session.add(account)
        for secret, is_sandbox in ((live, False), (sandbox, True)):
            material = make_result_key(secret)
            session.add(
                ApiKey(
                    id=new_id("key"),
                    account_id=account.id,
                    name="test",
                    prefix=secret[:12],
                    secret_sha256=secret_sha256(secret),
                    sandbox=is_sandbox,
                    result_salt=material.salt,
                    result_public_key=material.public_key,
                )
            )
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://gateway.test/api/v1"
        ) as client:
            yield GatewayUnderTest(client, settings, account.id, live, sandbox, app)
    finally:
        await runtime.stop()


class StatusCounter:
    """Counts the statuses the app answers (pure ASGI, outside it): the server's own tally of
    a fuzzing run, whatever the client reports."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.statuses: Counter[int] = Counter()
        self.server_errors: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        answered = False

        async def counting_send(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start":
                answered = True
                self._count(scope, int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except BaseException:
            if not answered:  # the server answers 500 itself
                self._count(scope, 500)
            raise

    def _count(self, scope: Scope, status: int) -> None:
        self.statuses[status] += 1
        if status >= 500:
            query = scope.get("query_string", b"").decode("latin-1")
            self.server_errors.append(f"{scope['method']} {scope['path']}?{query} -> {status}")


class ServedGateway(threading.Thread):
    """The harness app behind a real uvicorn server, in a thread with its own event loop."""

    def __init__(self, tmp_path: Path, http: str = "auto", **overrides: Any) -> None:
        """`http`: uvicorn's HTTP implementation ("auto" picks httptools when installed, as
        the gateway's own `serve` does; "h11" the pure-Python one). `overrides`: settings."""
        super().__init__(daemon=True)
        self.tmp_path = tmp_path
        self.http = http
        self.overrides = overrides
        self.port = free_port()
        self.server: uvicorn.Server | None = None
        self.gateway: GatewayUnderTest | None = None
        self.counter: StatusCounter | None = None
        self.error: BaseException | None = None

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc

    def wait_started(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.error is None and self.is_alive():
            if self.server is not None and self.server.started:
                return True
            time.sleep(0.05)
        return False

    async def _serve(self) -> None:
        async with gateway_under_test(self.tmp_path, **self.overrides) as gateway:
            self.gateway = gateway
            self.counter = StatusCounter(gateway.client._transport.app)  # type: ignore[attr-defined]
            config = uvicorn.Config(
                self.counter,
                host="127.0.0.1",
                port=self.port,
                lifespan="off",
                log_level="warning",
                http=self.http,  # type: ignore[arg-type]
            )
            self.server = uvicorn.Server(config)
            await self.server.serve()

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        self.join(timeout=30)
