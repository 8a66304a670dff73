"""Each `webhooks.endpoint_changed` carries an endpoint's whole state, and the notifier keeps
the latest: a change older than the stored one (sent again by `kiln-admin dlq replay` after it
failed here, or otherwise late) changes nothing. Without that, a replayed change brought back a
deleted endpoint or a rotated-out signing secret."""

import base64
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from kiln_contracts import Event
from kiln_notifier.tables import make_tables
from tests.integration.notifier.conftest import KEYRING, Notifier, endpoint_event, job_event

pytestmark = pytest.mark.timeout(60)

ENDPOINTS = make_tables().endpoints
OLD_SECRET = "whsec_" + base64.b64encode(b"\x31" * 32).decode()
NEW_SECRET = "whsec_" + base64.b64encode(b"\x32" * 32).decode()
# After the default secret the `notifier` fixture stores for the account.
START = datetime.now(UTC) + timedelta(hours=1)


def at(event: Event, seconds: int) -> Event:
    """The event as if the gateway had made the change `seconds` after START."""
    event.envelope.occurred_at.FromDatetime(START + timedelta(seconds=seconds))
    return event


async def endpoint_row(notifier: Notifier, endpoint_id: str) -> sa.Row[tuple[object, ...]]:
    return await notifier.db.read(
        lambda c: c.execute(
            sa.select(ENDPOINTS).where(ENDPOINTS.c.endpoint_id == endpoint_id)
        ).one()
    )


async def test_an_older_change_does_not_bring_back_a_deleted_endpoint(notifier: Notifier) -> None:
    url = "http://127.0.0.1:9/hook"
    await notifier.feed(at(endpoint_event("ep_1", url, OLD_SECRET), 0))
    older_update = at(endpoint_event("ep_1", url + "/v2", OLD_SECRET), 10)
    await notifier.feed(at(endpoint_event("ep_1", url, deleted=True), 20))
    await notifier.feed(older_update)  # the update, failed here once, replayed after the delete

    row = await endpoint_row(notifier, "ep_1")
    assert row.deleted and row.url == url
    assert await notifier.feed(job_event("job.completed", "job_1")) == []  # nothing to send


async def test_an_older_change_does_not_bring_back_a_rotated_out_secret(
    notifier: Notifier,
) -> None:
    account_default = "default_acct_test"
    await notifier.feed(at(endpoint_event(account_default, secret=OLD_SECRET, is_default=True), 0))
    older = at(endpoint_event(account_default, secret=OLD_SECRET, is_default=True), 5)
    await notifier.feed(at(endpoint_event(account_default, secret=NEW_SECRET, is_default=True), 9))
    await notifier.feed(older)

    row = await endpoint_row(notifier, account_default)
    assert KEYRING.open(row.sealed_secret) == NEW_SECRET


async def test_changes_in_order_and_the_same_change_again_still_apply(notifier: Notifier) -> None:
    url = "http://127.0.0.1:9/hook"
    first = at(endpoint_event("ep_2", url, OLD_SECRET), 0)
    await notifier.feed(first)
    await notifier.feed(at(endpoint_event("ep_2", url + "/v2", OLD_SECRET), 0))  # same instant
    assert (await endpoint_row(notifier, "ep_2")).url == url + "/v2"
    await notifier.feed(at(endpoint_event("ep_2", url + "/v3", NEW_SECRET), 1))
    row = await endpoint_row(notifier, "ep_2")
    assert row.url == url + "/v3" and KEYRING.open(row.sealed_secret) == NEW_SECRET
