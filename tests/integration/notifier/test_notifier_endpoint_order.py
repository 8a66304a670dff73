"""Each `webhooks.endpoint_changed` carries an endpoint's whole state and the gateway's revision
of it, and the notifier keeps the highest revision: a lower one (sent again by `kiln-admin dlq
replay` after it failed here, or sent late by another gateway replica's outbox) changes
nothing. Without that, such a change brought back a deleted endpoint or a rotated-out signing
secret. Revisions, not times: gateway replicas' clocks differ."""

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
URL = "http://127.0.0.1:9/hook"


def at(event: Event, when: datetime) -> Event:
    """The event as if the gateway that made the change had read `when` on its clock."""
    event.envelope.occurred_at.FromDatetime(when)
    return event


async def endpoint_row(notifier: Notifier, endpoint_id: str) -> sa.Row[tuple[object, ...]]:
    return await notifier.db.read(
        lambda c: c.execute(
            sa.select(ENDPOINTS).where(ENDPOINTS.c.endpoint_id == endpoint_id)
        ).one()
    )


async def test_a_lower_revision_does_not_bring_back_a_deleted_endpoint(notifier: Notifier) -> None:
    await notifier.feed(endpoint_event("ep_1", URL, OLD_SECRET, revision=1))
    update = endpoint_event("ep_1", URL + "/v2", OLD_SECRET, revision=2)
    await notifier.feed(endpoint_event("ep_1", URL, deleted=True, revision=3))
    await notifier.feed(update)  # failed here once, replayed after the delete

    row = await endpoint_row(notifier, "ep_1")
    assert row.deleted and row.url == URL and row.revision == 3
    assert await notifier.feed(job_event("job.completed", "job_1")) == []  # nothing to send


async def test_a_lower_revision_does_not_bring_back_a_rotated_out_secret(
    notifier: Notifier,
) -> None:
    await notifier.feed(endpoint_event("ep_2", URL, OLD_SECRET, revision=1))
    await notifier.feed(endpoint_event("ep_2", URL, NEW_SECRET, revision=2))
    await notifier.feed(endpoint_event("ep_2", URL, OLD_SECRET, revision=1))  # sent again

    row = await endpoint_row(notifier, "ep_2")
    assert KEYRING.open(row.sealed_secret) == NEW_SECRET and row.revision == 2


async def test_a_higher_revision_wins_whatever_the_clocks_say(notifier: Notifier) -> None:
    """Two gateway replicas: the second change was made on a clock a second behind."""
    now = datetime.now(UTC)
    await notifier.feed(at(endpoint_event("ep_3", URL, OLD_SECRET, revision=1), now))
    late_clock = now - timedelta(seconds=1)
    await notifier.feed(at(endpoint_event("ep_3", URL, deleted=True, revision=2), late_clock))
    assert (await endpoint_row(notifier, "ep_3")).deleted


async def test_the_same_revision_again_and_changes_without_one_still_apply(
    notifier: Notifier,
) -> None:
    await notifier.feed(endpoint_event("ep_4", URL, OLD_SECRET, revision=1))
    await notifier.feed(endpoint_event("ep_4", URL + "/v2", OLD_SECRET, revision=1))
    assert (await endpoint_row(notifier, "ep_4")).url == URL + "/v2"
    # A gateway of the release before revisions, during an upgrade: applied, revision kept.
    await notifier.feed(endpoint_event("ep_4", URL + "/v3", NEW_SECRET))
    row = await endpoint_row(notifier, "ep_4")
    assert row.url == URL + "/v3" and KEYRING.open(row.sealed_secret) == NEW_SECRET
    assert row.revision == 1
