"""The gateway app on a real SQLite database, without Kafka.

`gateway_without_kafka(settings)` builds the real app (`create_app`) and replaces only its
lifespan: the runtime starts without Kafka (`start(connect_kafka=False)`: the database,
migrated, and the group commit), so no producer, publisher or consumer runs. Events that
routes emit stay in the outbox table, which is all that routes about accounts, sessions, keys
and limits need. For the pipeline (jobs that
move), use the e2e stack.

    def test_something(gateway: Gateway) -> None:
        account = gateway.create_account("ada@example.com")
        key = gateway.create_key(account["id"])
        gateway.client.get("/models", headers=bearer(key["secret"]))
"""

import contextlib
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from kiln_crypto import new_secrets_key
from kiln_gateway.app import create_app
from kiln_gateway.config import GatewaySettings
from kiln_gateway.state import GatewayState

ADMIN_TOKEN = "test-admin-token-" + "x" * 16
PASSWORD = "a long passphrase"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def make_settings(tmp_path: Path, **overrides: Any) -> GatewaySettings:
    values: dict[str, Any] = {
        "database_url": f"sqlite+aiosqlite:///{tmp_path}/gateway.db",
        "data_dir": tmp_path,
        "blob_dir": tmp_path / "blobs",
        "admin_token": ADMIN_TOKEN,
        "session_signing_key": secrets.token_urlsafe(32),
        "secrets_keys": new_secrets_key(),
        "decision_wait_s": 0.0,
        "kafka_bootstrap": "127.0.0.1:1",  # never contacted
    }
    values.update(overrides)
    return GatewaySettings(**values)


def database_only_lifespan(state: GatewayState) -> Any:
    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await state.runtime.start(connect_kafka=False)
        try:
            yield
        finally:
            await state.last_used.close()
            await state.runtime.stop()

    return lifespan


@dataclass
class Gateway:
    app: FastAPI
    client: TestClient
    settings: GatewaySettings

    @property
    def state(self) -> GatewayState:
        state: GatewayState = self.app.state.gateway
        return state

    def admin(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.client.request(method, path, headers=bearer(ADMIN_TOKEN), **kwargs)
        assert response.status_code < 300, response.text
        return response.json()["data"]

    def create_account(self, email: str, password: str = PASSWORD) -> dict[str, Any]:
        account: dict[str, Any] = self.admin(
            "POST", "/admin/accounts", json={"email": email, "password": password}
        )
        return account

    def create_key(self, account_id: str, sandbox: bool = False) -> dict[str, Any]:
        key: dict[str, Any] = self.admin(
            "POST",
            f"/admin/accounts/{account_id}/keys",
            json={"name": "test", "sandbox": sandbox},
        )
        return key

    def login(self, email: str, password: str = PASSWORD) -> str:
        response = self.client.post("/auth/token", json={"email": email, "password": password})
        assert response.status_code == 200, response.text
        token: str = response.json()["data"]["token"]
        return token


@contextlib.contextmanager
def gateway_without_kafka(settings: GatewaySettings) -> Iterator[Gateway]:
    app = create_app(settings)
    state: GatewayState = app.state.gateway
    app.router.lifespan_context = database_only_lifespan(state)
    with TestClient(app, base_url="http://testserver/api/v1") as client:
        yield Gateway(app, client, settings)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    with gateway_without_kafka(make_settings(tmp_path)) as running:
        yield running
