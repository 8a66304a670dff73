"""The gateway's webhook routes on a real database (no broker): endpoints (secret once, URL
guard, event filter, other accounts' ids are 404), the events they announce to the notifier,
the public key, and the delivery log built from `webhook.attempted` events."""

import base64
import contextlib
import secrets
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import Engine, make_url, select, text

from kiln_contracts import decode, encode, new_event
from kiln_contracts.v1 import webhooks_pb2
from kiln_crypto import SecretsKeyring, new_secrets_key
from kiln_gateway.handlers import Attempt, ReadModel, disable_gone_endpoint
from kiln_gateway.secrets_rotation import rotate_secrets
from kiln_gateway.tables import MESSAGING, WebhookEndpoint
from kiln_gateway.webhooks import repository as webhooks_repository
from kiln_runtime.db import make_sync_engine
from kiln_runtime.testing import EventDriver
from tests.integration.gateway.conftest import Gateway, bearer, gateway_without_kafka, make_settings

SIGNING_KEY = base64.b64encode(secrets.token_bytes(32)).decode()


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gateway]:
    settings = make_settings(tmp_path, webhook_signing_key=SIGNING_KEY, allow_loopback_urls=True)
    with gateway_without_kafka(settings) as running:
        yield running


@pytest.fixture
def engine(gw: Gateway) -> Iterator[Engine]:
    """A synchronous engine on the gateway's database: another writer beside the app."""
    made = make_sync_engine(gw.settings.database_url)
    try:
        yield made
    finally:
        made.dispose()


def account_with_key(gw: Gateway, email: str) -> tuple[str, dict[str, str]]:
    account = gw.create_account(email)
    key = gw.create_key(account["id"])
    return account["id"], bearer(key["secret"])


def outbox_events(gw: Gateway, event_type: str) -> list[Any]:
    async def read() -> list[Any]:
        async with gw.state.runtime.sessions() as session:
            rows = (await session.execute(select(MESSAGING.outbox.c.payload))).all()
        return [decode(row.payload) for row in rows]

    return [e for e in gw.client.portal.call(read) if e.type == event_type]  # type: ignore[union-attr]


def raw_outbox_payloads(gw: Gateway) -> list[bytes]:
    async def read() -> list[bytes]:
        async with gw.state.runtime.sessions() as session:
            rows = (await session.execute(select(MESSAGING.outbox.c.payload))).all()
        return [bytes(row.payload) for row in rows]

    payloads: list[bytes] = gw.client.portal.call(read)  # type: ignore[union-attr]
    return payloads


def stored_endpoint_secret(gw: Gateway, endpoint_id: str) -> tuple[str, str]:
    """The endpoint's row: (the legacy clear column, the sealed one)."""

    async def read() -> tuple[str, str]:
        async with gw.state.runtime.sessions() as session:
            row = (
                await session.execute(
                    text("SELECT secret, sealed_secret FROM webhook_endpoints WHERE id = :id"),
                    {"id": endpoint_id},
                )
            ).one()
        return row[0], row[1]

    stored: tuple[str, str] = gw.client.portal.call(read)  # type: ignore[union-attr]
    return stored


def execute(gw: Gateway, sql: str, **params: Any) -> list[Any]:
    async def run() -> list[Any]:
        async with gw.state.runtime.sessions() as session, session.begin():
            result = await session.execute(text(sql), params)
            return list(result.all()) if result.returns_rows else []

    rows: list[Any] = gw.client.portal.call(run)  # type: ignore[union-attr]
    return rows


def feed(gw: Gateway, event_type: str, message: Any, account_id: str, job_id: str = "") -> None:
    event = decode(encode(new_event(event_type, message, account_id=account_id, job_id=job_id)))

    async def handle() -> None:
        driver = EventDriver(
            gw.state.runtime.db, MESSAGING, ReadModel().handlers(), group="gateway"
        )
        await driver.process(event)

    gw.client.portal.call(handle)  # type: ignore[union-attr]


def feed_batch(gw: Gateway, events: list[tuple[str, Any, str, str]]) -> None:
    """Events (type, message, account, job) handled as ONE batch, as one poll returns them."""
    decoded = [
        decode(encode(new_event(t, message, account_id=account, job_id=job)))
        for t, message, account, job in events
    ]

    async def handle() -> None:
        driver = EventDriver(
            gw.state.runtime.db, MESSAGING, ReadModel().handlers(), group="gateway"
        )
        await driver.process_batch(decoded)

    gw.client.portal.call(handle)  # type: ignore[union-attr]


def test_endpoint_lifecycle(gw: Gateway) -> None:
    started_ms = int(time.time() * 1000)
    account_id, auth = account_with_key(gw, "ada@example.com")
    created = gw.client.post(
        "/webhooks",
        headers=auth,
        json={"url": "http://127.0.0.1:9999/hook", "event_types": ["job.failed", "job.completed"]},
    )
    assert created.status_code == 201, created.text
    data = created.json()["data"]
    secret = data["secret"]
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    assert data["event_types"] == ["job.completed", "job.failed"]
    assert data["status"] == "enabled"
    endpoint_id = data["id"]
    [announced] = [
        e.message
        for e in outbox_events(gw, "webhooks.endpoint_changed")
        if e.message.endpoint_id == endpoint_id
    ]
    # The notifier is told the secret sealed with the operator's keyring, never in clear.
    assert announced.url == "http://127.0.0.1:9999/hook" and not announced.secret
    assert gw.state.keyring.open(announced.sealed_secret) == secret
    assert secret.encode() not in b"".join(raw_outbox_payloads(gw))
    legacy, sealed = stored_endpoint_secret(gw, endpoint_id)
    assert legacy == "" and gw.state.keyring.open(sealed) == secret

    listed = gw.client.get("/webhooks", headers=auth).json()
    assert [e["id"] for e in listed["data"]] == [endpoint_id]
    assert "secret" not in listed["data"][0]
    assert listed["pagination"] == {"page": 1, "per_page": 25, "total_pages": 1, "total_results": 1}

    updated = gw.client.patch(
        f"/webhooks/{endpoint_id}", headers=auth, json={"event_types": []}
    ).json()["data"]
    assert updated["event_types"] == []

    # Another account sees none of it.
    _, other = account_with_key(gw, "bob@example.com")
    assert gw.client.get(f"/webhooks/{endpoint_id}", headers=other).status_code == 404
    assert gw.client.delete(f"/webhooks/{endpoint_id}", headers=other).status_code == 404
    assert gw.client.post(f"/webhooks/{endpoint_id}/test", headers=other).status_code == 404

    test = gw.client.post(f"/webhooks/{endpoint_id}/test", headers=auth)
    assert test.status_code == 202
    [requested] = outbox_events(gw, "webhook.test_requested")
    assert requested.message.endpoint_id == endpoint_id
    assert requested.message.test_id == test.json()["data"]["test_id"]

    assert gw.client.delete(f"/webhooks/{endpoint_id}", headers=auth).status_code == 200
    assert gw.client.get("/webhooks", headers=auth).json()["data"] == []
    deleted = [
        e.message
        for e in outbox_events(gw, "webhooks.endpoint_changed")
        if e.message.endpoint_id == endpoint_id and e.message.deleted
    ]
    assert len(deleted) == 1
    assert account_id
    # Each change announced under a higher revision (made, updated, deleted), which the
    # notifier uses to keep the latest whatever order they reach it in; at least the clock in
    # milliseconds, so that it keeps rising after a restore of the gateway's database.
    revisions = [
        e.message.revision
        for e in outbox_events(gw, "webhooks.endpoint_changed")
        if e.message.endpoint_id == endpoint_id
    ]
    assert len(set(revisions)) == 3 and deleted[0].revision == max(revisions)
    assert min(revisions) >= started_ms


def change_overtaken(
    gw: Gateway,
    account_id: str,
    endpoint_id: str,
    overtake: Callable[[], None],
    change: Callable[[WebhookEndpoint], None],
) -> int:
    """Make `change` with `webhooks.repository.change_endpoint`, running `overtake` between its
    first read of the row and its write (what another writer does on SQLite, which has no row
    lock); how many tries it took."""
    tries = 0

    def apply(endpoint: WebhookEndpoint) -> None:
        nonlocal tries
        tries += 1
        if tries == 1:
            overtake()
        change(endpoint)

    async def run() -> None:
        await webhooks_repository.change_endpoint(
            gw.state.runtime.sessions, account_id, endpoint_id, apply
        )

    gw.client.portal.call(run)  # type: ignore[union-attr]
    return tries


def last_announced(gw: Gateway, endpoint_id: str) -> Any:
    """The endpoint's `webhooks.endpoint_changed` with the highest revision in the outbox."""
    return max(
        (
            e.message
            for e in outbox_events(gw, "webhooks.endpoint_changed")
            if e.message.endpoint_id == endpoint_id
        ),
        key=lambda m: m.revision,
    )


def test_a_change_overtaken_by_another_is_made_again_on_the_row_as_it_now_is(
    gw: Gateway,
) -> None:
    """On SQLite (no row lock) another replica's change may commit between this change's read
    and its write. The overtaken change is made again on the row as it now is: the row keeps
    both, and the change is announced under a revision above the other's, with the other's
    URL. Before, it announced the URL it had read (the old one) under the highest revision, so
    the notifier kept sending to the old URL while the gateway showed the new one."""
    account_id, auth = account_with_key(gw, "cid@example.com")
    created = gw.client.post("/webhooks", headers=auth, json={"url": "http://127.0.0.1:9/a"})
    endpoint_id = created.json()["data"]["id"]
    database = make_url(gw.settings.database_url).database
    other_revision = 0

    def other_replica() -> None:
        nonlocal other_revision
        with contextlib.closing(sqlite3.connect(str(database))) as other:
            other.execute(
                "UPDATE webhook_endpoints SET url = 'http://127.0.0.1:9/b', "
                "revision = revision + 1 WHERE id = ?",
                (endpoint_id,),
            )
            other.commit()
            [(other_revision,)] = other.execute(
                "SELECT revision FROM webhook_endpoints WHERE id = ?", (endpoint_id,)
            )

    def describe(endpoint: WebhookEndpoint) -> None:
        endpoint.description = "billing hooks"

    assert change_overtaken(gw, account_id, endpoint_id, other_replica, describe) == 2
    shown = gw.client.get(f"/webhooks/{endpoint_id}", headers=auth).json()["data"]
    assert (shown["url"], shown["description"]) == ("http://127.0.0.1:9/b", "billing hooks")
    announced = last_announced(gw, endpoint_id)
    assert announced.revision > other_revision and announced.url == "http://127.0.0.1:9/b"


def test_an_update_overtaken_by_a_410_disable_is_made_again_and_re_enables(
    gw: Gateway, engine: Engine
) -> None:
    """The receiver answered 410 and the read model disabled the endpoint between a PATCH's
    read and its write (SQLite). The disable moves the revision, so the PATCH is made again on
    the disabled row and re-enables it; before, its write matched the revision it had read and
    left `disabled_at` alone (it had read None), so it answered and announced "enabled" while
    the row stayed disabled."""
    account_id, auth = account_with_key(gw, "dot@example.com")
    created = gw.client.post("/webhooks", headers=auth, json={"url": "http://127.0.0.1:9/a"})
    endpoint_id = created.json()["data"]["id"]

    def receiver_gone() -> None:
        gone = Attempt(
            delivery_id="dlv_1",
            webhook_id="msg_1",
            endpoint_id=endpoint_id,
            url="http://127.0.0.1:9/a",
            event_type="job.completed",
            job_id="job_1",
            number=1,
            attempted_at=datetime.now(UTC) + timedelta(seconds=1),
            status_code=410,
            latency_ms=3,
            error=None,
            outcome="failed",
            next_attempt_at=None,
        )
        with engine.begin() as connection:
            disable_gone_endpoint(connection, account_id, gone)

    def enable(endpoint: WebhookEndpoint) -> None:
        endpoint.disabled_at = None
        endpoint.description = "enabled again"

    assert change_overtaken(gw, account_id, endpoint_id, receiver_gone, enable) == 2
    shown = gw.client.get(f"/webhooks/{endpoint_id}", headers=auth).json()["data"]
    assert (shown["status"], shown["description"]) == ("enabled", "enabled again")


def test_a_change_overtaken_by_a_secrets_rotation_announces_the_resealed_secret(
    gw: Gateway, engine: Engine
) -> None:
    """The rotation command resealed the endpoint's secret between a change's read and its write
    (SQLite). The rotation moves the revision, so the change is made again on the resealed row
    and announces the secret sealed with the new first key; before, it announced the one it had
    read, sealed with the key being retired."""
    account_id, auth = account_with_key(gw, "rot@example.com")
    created = gw.client.post("/webhooks", headers=auth, json={"url": "http://127.0.0.1:9/a"})
    endpoint_id = created.json()["data"]["id"]
    old_key = gw.settings.secrets_keys.get_secret_value()
    keyring = SecretsKeyring([new_secrets_key(), old_key])

    def rotation() -> None:
        rotate_secrets(engine, keyring)

    def describe(endpoint: WebhookEndpoint) -> None:
        endpoint.description = "after the rotation"

    assert change_overtaken(gw, account_id, endpoint_id, rotation, describe) == 2
    shown = gw.client.get(f"/webhooks/{endpoint_id}", headers=auth).json()["data"]
    assert shown["description"] == "after the rotation"
    assert keyring.sealed_with_first_key(last_announced(gw, endpoint_id).sealed_secret)


def test_the_default_secret_is_stored_and_announced_sealed(gw: Gateway) -> None:
    account_id, auth = account_with_key(gw, "cy@example.com")
    shown = gw.client.get("/webhooks/default-secret", headers=auth)
    assert shown.status_code == 200, shown.text
    secret = shown.json()["data"]["secret"]
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    [announced] = [
        e.message
        for e in outbox_events(gw, "webhooks.endpoint_changed")
        if e.message.endpoint_id == f"default_{account_id}"
    ]
    assert announced.is_default and not announced.secret and announced.revision == 1
    assert gw.state.keyring.open(announced.sealed_secret) == secret
    [(legacy, sealed)] = execute(
        gw,
        "SELECT default_webhook_secret, sealed_webhook_secret FROM accounts WHERE id = :id",
        id=account_id,
    )
    assert legacy == "" and gw.state.keyring.open(sealed) == secret
    assert secret.encode() not in b"".join(raw_outbox_payloads(gw))


def test_a_clear_default_secret_of_an_earlier_release_is_served_and_an_unopenable_one_is_a_503(
    gw: Gateway,
) -> None:
    account_id, auth = account_with_key(gw, "dee@example.com")
    # What a replica of the release before sealed secrets writes during a rolling upgrade.
    clear = "whsec_" + base64.b64encode(b"\x05" * 32).decode()
    execute(
        gw,
        "UPDATE accounts SET default_webhook_secret = :clear, sealed_webhook_secret = NULL "
        "WHERE id = :id",
        clear=clear,
        id=account_id,
    )
    assert gw.client.get("/webhooks/default-secret", headers=auth).json()["data"]["secret"] == clear
    # Sealed with a key the operator no longer lists.
    lost = SecretsKeyring([new_secrets_key()]).seal(clear)
    execute(
        gw,
        "UPDATE accounts SET default_webhook_secret = '', sealed_webhook_secret = :sealed "
        "WHERE id = :id",
        sealed=lost,
        id=account_id,
    )
    answer = gw.client.get("/webhooks/default-secret", headers=auth)
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["code"] == "UNAVAILABLE"
    assert clear not in answer.text and lost not in answer.text


@pytest.mark.parametrize(
    "body",
    [
        {"url": "https://10.0.0.1/hook"},
        {"url": "http://example.com/hook"},
        {"url": "https://169.254.169.254/latest"},
        {"url": "https://example.com/", "event_types": ["job.started"]},
        {"url": "https://example.com/", "extra": 1},
        {"url": 5},
    ],
)
def test_bad_endpoints_are_422(gw: Gateway, body: dict[str, Any]) -> None:
    _, auth = account_with_key(gw, "ada@example.com")
    response = gw.client.post("/webhooks", headers=auth, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "VALIDATION_ERROR"


def test_routes_need_an_api_key(gw: Gateway) -> None:
    for method, path in [
        ("GET", "/webhooks"),
        ("POST", "/webhooks"),
        ("GET", "/webhooks/public-key"),
        ("GET", "/webhooks/deliveries"),
    ]:
        assert gw.client.request(method, path).status_code == 401


def test_public_key_is_the_signing_keys_public_half(gw: Gateway) -> None:
    _, auth = account_with_key(gw, "ada@example.com")
    data = gw.client.get("/webhooks/public-key", headers=auth).json()["data"]
    private = Ed25519PrivateKey.from_private_bytes(base64.b64decode(SIGNING_KEY))
    expected = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert base64.b64decode(data["public_key"]) == expected
    assert data["algorithm"] == "ed25519" and data["signature_version"] == "v1a"


def test_public_key_is_404_when_not_configured(tmp_path: Path) -> None:
    with gateway_without_kafka(make_settings(tmp_path)) as plain:
        _, auth = account_with_key(plain, "ada@example.com")
        response = plain.client.get("/webhooks/public-key", headers=auth)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "NOT_FOUND"


def attempted(
    delivery_id: str, attempt: int, status: int, outcome: str, job_id: str, endpoint_id: str = ""
) -> webhooks_pb2.WebhookAttempted:
    message = webhooks_pb2.WebhookAttempted(
        delivery_id=delivery_id,
        webhook_id="evt_1",
        endpoint_id=endpoint_id,
        url="http://127.0.0.1:9999/hook",
        event_type="job.completed",
        job_id=job_id,
        attempt=attempt,
        status_code=status,
        latency_ms=12 * attempt,
        error="" if outcome == "delivered" else f"HTTP {status}",
        outcome=outcome,
    )
    message.attempted_at.FromDatetime(datetime.now(UTC))
    if outcome == "retrying":
        message.next_attempt_at.FromDatetime(datetime.now(UTC) + timedelta(seconds=10))
    return message


def test_delivery_log_and_redelivery(gw: Gateway) -> None:
    account_id, auth = account_with_key(gw, "ada@example.com")
    job_id = f"job_{uuid.uuid4().hex}"
    delivery_id = f"dlv_{uuid.uuid4().hex}"
    for attempt, status, outcome in [
        (1, 500, "retrying"),
        (2, 0, "retrying"),
        (3, 204, "delivered"),
    ]:
        message = attempted(delivery_id, attempt, status, outcome, job_id)
        feed(gw, "webhook.attempted", message, account_id, job_id)
        feed(gw, "webhook.attempted", message, account_id, job_id)  # a duplicate changes nothing
    log = gw.client.get("/webhooks/deliveries", headers=auth, params={"job_id": job_id}).json()
    [delivery] = log["data"]
    assert delivery["id"] == delivery_id and delivery["status"] == "delivered"
    assert delivery["endpoint_id"] is None and delivery["job_id"] == job_id
    assert [(a["attempt"], a["status_code"], a["outcome"]) for a in delivery["attempts"]] == [
        (1, 500, "retrying"),
        (2, None, "retrying"),
        (3, 204, "delivered"),
    ]
    assert delivery["attempts"][0]["next_attempt_at"] is not None
    assert delivery["attempts"][2]["latency_ms"] == 36
    assert log["pagination"]["total_results"] == 1
    assert (
        gw.client.get("/webhooks/deliveries", headers=auth, params={"job_id": "job_other"}).json()[
            "data"
        ]
        == []
    )
    assert gw.client.get(f"/webhooks/deliveries/{delivery_id}", headers=auth).status_code == 200

    again = gw.client.post(f"/webhooks/deliveries/{delivery_id}/redeliver", headers=auth)
    assert again.status_code == 202
    assert again.json()["data"]["webhook_id"] == "evt_1"
    [requested] = outbox_events(gw, "webhook.redelivery_requested")
    assert requested.message.delivery_id == delivery_id

    _, other = account_with_key(gw, "bob@example.com")
    assert gw.client.get("/webhooks/deliveries", headers=other).json()["data"] == []
    missing = gw.client.post(f"/webhooks/deliveries/{delivery_id}/redeliver", headers=other)
    assert missing.status_code == 404


def test_410_marks_the_endpoint_disabled_and_an_update_enables_it(gw: Gateway) -> None:
    account_id, auth = account_with_key(gw, "ada@example.com")
    endpoint = gw.client.post(
        "/webhooks", headers=auth, json={"url": "http://127.0.0.1:9999/hook"}
    ).json()["data"]
    delivery_id = f"dlv_{uuid.uuid4().hex}"
    feed(
        gw,
        "webhook.attempted",
        attempted(delivery_id, 1, 410, "failed", "job_x", endpoint_id=endpoint["id"]),
        account_id,
    )
    shown = gw.client.get(f"/webhooks/{endpoint['id']}", headers=auth).json()["data"]
    assert shown["status"] == "disabled" and shown["disabled_at"]
    log = gw.client.get(
        "/webhooks/deliveries", headers=auth, params={"endpoint_id": endpoint["id"]}
    ).json()["data"]
    assert [d["status"] for d in log] == ["failed"]
    enabled = gw.client.patch(f"/webhooks/{endpoint['id']}", headers=auth, json={}).json()["data"]
    assert enabled["status"] == "enabled"


def test_a_batch_of_attempts_is_logged_as_one_by_one(gw: Gateway) -> None:
    """Attempts of one delivery in one batch (out of order, one twice, one from another
    account) leave the log the one-by-one path leaves."""
    account_id, auth = account_with_key(gw, "ada@example.com")
    other_id, _ = account_with_key(gw, "eve@example.com")
    job_id = f"job_{uuid.uuid4().hex}"
    delivery_id = f"dlv_{uuid.uuid4().hex}"
    first = attempted(delivery_id, 1, 500, "retrying", job_id)
    third = attempted(delivery_id, 3, 204, "delivered", job_id)
    second = attempted(delivery_id, 2, 503, "retrying", job_id)
    feed_batch(
        gw,
        [
            ("webhook.attempted", first, account_id, job_id),
            ("webhook.attempted", third, account_id, job_id),
            ("webhook.attempted", first, account_id, job_id),
            ("webhook.attempted", attempted(delivery_id, 4, 500, "failed", job_id), other_id, ""),
            ("webhook.attempted", second, account_id, job_id),
        ],
    )
    [delivery] = gw.client.get(
        "/webhooks/deliveries", headers=auth, params={"job_id": job_id}
    ).json()["data"]
    # The latest attempt (3) decides the delivery's state though 2 arrived after it.
    assert delivery["status"] == "delivered"
    assert [(a["attempt"], a["status_code"]) for a in delivery["attempts"]] == [
        (1, 500),
        (2, 503),
        (3, 204),
    ]
