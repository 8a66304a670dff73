"""The notifier's copy of the webhook secrets, on a real SQLite database and real HTTP: stored
sealed whatever form the gateway sent (sealed with the first key, with an older one, in clear
as gateways before sealed secrets did), signing deliveries that verify; one no key opens is
kept and its deliveries wait, saying why; an ignored change is not judged by its secret.
Migration 0003 seals the clear secrets of an earlier release (and going down opens them); the
rotation command moves every secret to the first key."""

import base64
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from standardwebhooks import Webhook

from kiln_crypto import SecretsKeyring, new_secrets_key
from kiln_notifier.migrate import downgrade_connection, upgrade_connection
from kiln_notifier.secrets_rotation import rotate_secrets
from kiln_notifier.tables import DELIVERED, make_tables
from kiln_runtime.db import make_sync_engine
from tests.integration.notifier.conftest import (
    FIRST_KEY,
    KEYRING,
    OLDER_KEY,
    Notifier,
    Receiver,
    endpoint_event,
    job_event,
)

pytestmark = pytest.mark.timeout(120)

SECRET = "whsec_" + base64.b64encode(b"\x21" * 32).decode()
ENDPOINTS = make_tables().endpoints


async def stored(notifier: Notifier, endpoint_id: str) -> tuple[str, str | None]:
    """(the legacy clear column, the sealed one) of an endpoint."""
    row = await notifier.db.read(
        lambda c: c.execute(
            sa.select(ENDPOINTS.c.secret, ENDPOINTS.c.sealed_secret).where(
                ENDPOINTS.c.endpoint_id == endpoint_id
            )
        ).one()
    )
    return row[0], row[1]


async def delivered_and_verified(notifier: Notifier, hook: Receiver, job: str) -> Any:
    async def delivered() -> bool:
        return any(d.status == DELIVERED for d in await notifier.deliveries())

    await notifier.run_until(delivered)
    [request] = hook.got()
    payload = Webhook(SECRET).verify(request.body, request.headers)
    assert payload["data"]["id"] == job
    return payload


@pytest.mark.parametrize(
    "sealed_by",
    [KEYRING, SecretsKeyring([OLDER_KEY]), None],
    ids=["the first key", "an older key", "in clear (an earlier gateway)"],
)
async def test_a_secret_is_stored_sealed_with_the_first_key_and_signs(
    notifier: Notifier,
    receiver: Callable[..., Receiver],
    sealed_by: SecretsKeyring | None,
) -> None:
    hook = receiver(204)
    await notifier.feed(endpoint_event("we_1", hook.url, SECRET, sealed_by=sealed_by))
    legacy, sealed = await stored(notifier, "we_1")
    assert legacy == "" and sealed is not None and SECRET not in sealed
    assert SecretsKeyring([FIRST_KEY]).open(sealed) == SECRET
    await notifier.feed(job_event("job.completed", "job_sealed"))
    await delivered_and_verified(notifier, hook, "job_sealed")


async def test_a_secret_no_key_opens_is_kept_and_its_deliveries_wait(
    notifier: Notifier, receiver: Callable[..., Receiver]
) -> None:
    hook = receiver(204)
    foreign = SecretsKeyring([new_secrets_key()])
    event = endpoint_event("we_2", hook.url, SECRET, sealed_by=foreign)
    await notifier.feed(event)  # not poison: handled, no error
    _, sealed = await stored(notifier, "we_2")
    assert foreign.open(sealed or "") == SECRET
    await notifier.feed(job_event("job.completed", "job_waits"))
    sender = notifier.sender()
    [delivery] = await notifier.deliveries()
    [claim] = await sender.claim_due(1)
    await sender.deliver(claim)
    await sender.close()
    [attempt] = await notifier.attempts(delivery.id)
    assert attempt.error == "the signing secret cannot be read right now"
    assert hook.got() == []


async def test_an_ignored_change_is_not_judged_by_its_secret(
    notifier: Notifier, caplog: pytest.LogCaptureFixture
) -> None:
    """A change of a lower revision (sent again, or late) is ignored before its secret is
    looked at: no error about a secret that no key opens, and the stored one stays."""
    await notifier.feed(endpoint_event("we_3", "http://127.0.0.1:9/h", SECRET, revision=2))
    foreign = SecretsKeyring([new_secrets_key()])
    late = endpoint_event("we_3", "http://127.0.0.1:9/h", SECRET, sealed_by=foreign, revision=1)
    with caplog.at_level(logging.WARNING):
        await notifier.feed(late)
    assert "change ignored" in caplog.text
    assert "no key of KILN_SECRETS_KEYS" not in caplog.text
    _, sealed = await stored(notifier, "we_3")
    assert KEYRING.open(sealed or "") == SECRET


def database_at(tmp_path: Path, revision: str) -> sa.Engine:
    engine = make_sync_engine(f"sqlite:///{tmp_path}/notifier.db")
    with engine.begin() as connection:
        upgrade_connection(connection, revision)
    return engine


def insert_endpoint(engine: sa.Engine, endpoint_id: str, secret: str) -> None:
    """As a notifier of the release before sealed secrets stores one: in clear."""
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO endpoints (endpoint_id, account_id, url, secret, event_types, "
                "is_default, deleted, changed_at) VALUES (:id, 'acct_1', 'https://e.example/h', "
                ":secret, '[]', false, false, :now)"
            ),
            {"id": endpoint_id, "secret": secret, "now": datetime.now(UTC)},
        )


def endpoint_rows(engine: sa.Engine) -> list[Any]:
    with engine.connect() as connection:
        return list(
            connection.execute(
                sa.text("SELECT endpoint_id, secret, sealed_secret FROM endpoints ORDER BY 1")
            ).all()
        )


def test_the_migration_seals_the_clear_secrets_and_going_down_opens_them(tmp_path: Path) -> None:
    engine = database_at(tmp_path, "0002")
    try:
        insert_endpoint(engine, "we_1", SECRET)
        with engine.begin() as connection:
            upgrade_connection(connection, keyring=KEYRING)
        [(_, legacy, sealed)] = endpoint_rows(engine)
        assert legacy == "" and KEYRING.open(sealed) == SECRET
        with engine.begin() as connection:
            downgrade_connection(connection, "0002", keyring=KEYRING)
        with engine.connect() as connection:
            assert connection.execute(sa.text("SELECT secret FROM endpoints")).scalar() == SECRET
    finally:
        engine.dispose()


def test_rotation_moves_every_secret_to_the_first_key(tmp_path: Path) -> None:
    older = SecretsKeyring([OLDER_KEY])
    engine = database_at(tmp_path, "0002")
    try:
        insert_endpoint(engine, "we_1", SECRET)
        with engine.begin() as connection:
            upgrade_connection(connection, keyring=older)
        # A notifier of the earlier release, still running, stores another one in clear.
        insert_endpoint(engine, "we_2", SECRET)
        report = rotate_secrets(engine, KEYRING)
        assert (report.resealed, report.sealed_from_clear, report.unreadable) == (1, 1, [])
        again = rotate_secrets(engine, KEYRING)
        assert (again.current, again.resealed, again.sealed_from_clear) == (2, 0, 0)
        only_first = SecretsKeyring([FIRST_KEY])
        assert [(r[0], r[1], only_first.open(r[2])) for r in endpoint_rows(engine)] == [
            ("we_1", "", SECRET),
            ("we_2", "", SECRET),
        ]
    finally:
        engine.dispose()
