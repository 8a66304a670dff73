"""Webhook secrets of a gateway database of an earlier release (in clear) on SQLite and
PostgreSQL: migration 0004 seals them (accounts, endpoints, the unsent endpoint changes of the
outbox) with the operator's keyring and empties the clear columns, refuses to run without a
keyring when there is something to seal, and going down opens them again; the rotation command
moves every sealed secret to the first key of the keyring, seals what a replica of the earlier
release wrote in clear meanwhile, and a second run changes nothing."""

import base64
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from kiln_contracts import decode, encode, new_event
from kiln_contracts.v1 import webhooks_pb2
from kiln_crypto import SecretsKeyError, SecretsKeyring, new_secrets_key
from kiln_gateway.migrate import (
    current_revision,
    downgrade_connection,
    upgrade_connection,
    upgrade_database,
)
from kiln_gateway.secrets_rotation import rotate_secrets
from kiln_gateway.tables import MESSAGING, Base
from kiln_runtime.db import make_engine, make_sync_engine
from tests.integration.gateway.test_gateway_migrations import database_url  # noqa: F401

pytestmark = pytest.mark.integration

ACCOUNTS = Base.metadata.tables["accounts"]
ENDPOINTS = Base.metadata.tables["webhook_endpoints"]
OUTBOX = MESSAGING.outbox


def whsec(fill: int) -> str:
    return "whsec_" + base64.b64encode(bytes([fill]) * 32).decode()


ACCOUNT_SECRET, ENDPOINT_SECRET, OUTBOX_SECRET = whsec(1), whsec(2), whsec(3)


async def earlier_release_database(engine: AsyncEngine) -> None:
    """Revision 0003 with what the release before sealed secrets wrote: an account and an
    endpoint with clear secrets, and an unsent endpoint change carrying one."""
    await upgrade_database(engine, "0003")
    now = datetime.now(UTC)
    change = webhooks_pb2.WebhookEndpointChanged(
        endpoint_id="we_2", url="https://example.com/h", secret=OUTBOX_SECRET
    )
    envelope = new_event("webhooks.endpoint_changed", change, account_id="acct_1")
    async with engine.begin() as connection:
        await connection.execute(
            ACCOUNTS.insert().values(
                id="acct_1",
                email="ada@example.com",
                name="Ada",
                password_hash="x",
                default_webhook_secret=ACCOUNT_SECRET,
                suspended=False,
                created_at=now,
            )
        )
        await connection.execute(
            ENDPOINTS.insert().values(
                id="we_1",
                account_id="acct_1",
                url="https://example.com/h",
                secret=ENDPOINT_SECRET,
                event_types=[],
                description="",
                created_at=now,
                updated_at=now,
            )
        )
        await connection.execute(
            OUTBOX.insert().values(
                topic="webhooks.endpoint_changed",
                key="acct_1",
                event_id=envelope.event_id,
                payload=encode(envelope),
                created_at=now,
                owner="",
                lease_until=now,
            )
        )


async def stored(engine: AsyncEngine) -> dict[str, Any]:
    """The clear and sealed columns, and the outbox's endpoint change."""
    async with engine.connect() as connection:
        account = (
            await connection.execute(
                sa.text("SELECT default_webhook_secret, sealed_webhook_secret FROM accounts")
            )
        ).one()
        endpoint = (
            await connection.execute(
                sa.text("SELECT secret, sealed_secret FROM webhook_endpoints WHERE id = 'we_1'")
            )
        ).one()
        payload = (await connection.execute(sa.select(OUTBOX.c.payload))).scalar_one()
    message = decode(bytes(payload)).message
    assert isinstance(message, webhooks_pb2.WebhookEndpointChanged)
    return {"account": tuple(account), "endpoint": tuple(endpoint), "event": message}


async def test_the_migration_seals_the_clear_secrets_and_going_down_opens_them(
    database_url: str,  # noqa: F811
) -> None:
    keyring = SecretsKeyring([new_secrets_key()])
    engine = make_engine(database_url)
    try:
        await earlier_release_database(engine)
        await upgrade_database(engine, keyring=keyring)
        found = await stored(engine)
        assert found["account"][0] == "" and keyring.open(found["account"][1]) == ACCOUNT_SECRET
        assert found["endpoint"][0] == "" and keyring.open(found["endpoint"][1]) == ENDPOINT_SECRET
        event = found["event"]
        assert event.secret == "" and keyring.open(event.sealed_secret) == OUTBOX_SECRET
        assert event.endpoint_id == "we_2" and event.url == "https://example.com/h"

        async with engine.begin() as connection:
            await connection.run_sync(
                lambda sync: downgrade_connection(sync, "0003", keyring=keyring)
            )
        async with engine.connect() as connection:
            clear = (
                await connection.execute(sa.text("SELECT default_webhook_secret FROM accounts"))
            ).scalar_one()
            columns = await connection.run_sync(
                lambda sync: {c["name"] for c in sa.inspect(sync).get_columns("accounts")}
            )
            payload = (await connection.execute(sa.select(OUTBOX.c.payload))).scalar_one()
        assert clear == ACCOUNT_SECRET and "sealed_webhook_secret" not in columns
        restored = decode(bytes(payload)).message
        assert isinstance(restored, webhooks_pb2.WebhookEndpointChanged)
        assert restored.secret == OUTBOX_SECRET and restored.sealed_secret == ""
    finally:
        await engine.dispose()


async def test_without_a_keyring_the_migration_refuses_to_leave_secrets_in_clear(
    database_url: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KILN_SECRETS_KEYS", raising=False)
    engine = make_engine(database_url)
    try:
        await earlier_release_database(engine)
        # In one transaction, as the gateway's start and `kiln_gateway.migrate` run it (on
        # SQLite the async engine's DDL would not roll back).
        sync_engine = make_sync_engine(database_url)
        try:
            with (
                pytest.raises(SecretsKeyError, match="KILN_SECRETS_KEYS is not set"),
                sync_engine.begin() as connection,
            ):
                upgrade_connection(connection)
            with sync_engine.connect() as connection:
                assert current_revision(connection) == "0003"
                assert (
                    connection.execute(
                        sa.text("SELECT default_webhook_secret FROM accounts")
                    ).scalar_one()
                    == ACCOUNT_SECRET
                )
        finally:
            sync_engine.dispose()
        # Alembic's command line and `python -m kiln_gateway.migrate` read the variable.
        keys = new_secrets_key()
        monkeypatch.setenv("KILN_SECRETS_KEYS", keys)
        await upgrade_database(engine)
        found = await stored(engine)
        assert SecretsKeyring.from_setting(keys).open(found["account"][1]) == ACCOUNT_SECRET
    finally:
        await engine.dispose()


async def test_rotation_moves_every_secret_to_the_first_key(
    database_url: str,  # noqa: F811
) -> None:
    old, new = new_secrets_key(), new_secrets_key()
    engine = make_engine(database_url)
    try:
        await earlier_release_database(engine)
        await upgrade_database(engine, keyring=SecretsKeyring([old]))
        # A replica of the earlier release, still running, makes an endpoint in clear.
        async with engine.begin() as connection:
            now = datetime.now(UTC)
            await connection.execute(
                ENDPOINTS.insert().values(
                    id="we_9",
                    account_id="acct_1",
                    url="https://example.com/9",
                    secret=whsec(9),
                    event_types=[],
                    description="",
                    created_at=now,
                    updated_at=now,
                )
            )
        sync_engine = make_sync_engine(database_url)
        try:
            reports = rotate_secrets(sync_engine, SecretsKeyring([new, old]))
            assert {place: (r.resealed, r.sealed_from_clear) for place, r in reports.items()} == {
                "accounts' default secrets": (1, 0),
                "endpoints' secrets": (1, 1),
                "unsent endpoint changes": (1, 0),
            }
            again = rotate_secrets(sync_engine, SecretsKeyring([new, old]))
            assert all(r.resealed == r.sealed_from_clear == 0 for r in again.values())
            assert [r.current for r in again.values()] == [1, 2, 1]
        finally:
            sync_engine.dispose()
        only_new = SecretsKeyring([new])
        async with engine.connect() as connection:
            rows = (
                await connection.execute(
                    sa.text("SELECT id, secret, sealed_secret FROM webhook_endpoints ORDER BY id")
                )
            ).all()
        assert [(r[0], r[1], only_new.open(r[2])) for r in rows] == [
            ("we_1", "", ENDPOINT_SECRET),
            ("we_9", "", whsec(9)),
        ]
        found = await stored(engine)
        assert only_new.open(found["account"][1]) == ACCOUNT_SECRET
        assert only_new.open(found["event"].sealed_secret) == OUTBOX_SECRET
    finally:
        await engine.dispose()


async def test_rotation_names_what_no_key_opens_and_leaves_it(
    database_url: str,  # noqa: F811
) -> None:
    lost = new_secrets_key()
    engine = make_engine(database_url)
    try:
        await earlier_release_database(engine)
        await upgrade_database(engine, keyring=SecretsKeyring([lost]))
        async with engine.connect() as connection:
            before = (
                await connection.execute(sa.text("SELECT sealed_secret FROM webhook_endpoints"))
            ).scalar_one()
        sync_engine = make_sync_engine(database_url)
        try:
            reports = rotate_secrets(sync_engine, SecretsKeyring([new_secrets_key()]))
        finally:
            sync_engine.dispose()
        assert reports["endpoints' secrets"].unreadable == ["we_1"]
        assert reports["accounts' default secrets"].unreadable == ["acct_1"]
        [row] = reports["unsent endpoint changes"].unreadable
        assert row.startswith("outbox row ")
        summary = reports["endpoints' secrets"].summary()
        assert "1 that no key opens: we_1" in summary and before not in summary
        async with engine.connect() as connection:
            after = (
                await connection.execute(sa.text("SELECT sealed_secret FROM webhook_endpoints"))
            ).scalar_one()
        assert after == before
    finally:
        await engine.dispose()
