"""Each `webhooks.endpoint_changed` carries an endpoint's whole state and the gateway's revision
of it, and the notifier keeps the highest revision: a lower one (sent again by `kiln-admin dlq
replay` after it failed here, or sent late by another gateway replica's outbox) changes
nothing, and neither does the same revision again. Without that, such a change brought back a
deleted endpoint, an old signing secret, or re-enabled an endpoint disabled after a 410.
Revisions, not times: gateway replicas' clocks differ."""

import base64
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from kiln_contracts import Event
from kiln_notifier.tables import make_tables
from tests.integration.notifier.conftest import (
    ACCOUNT,
    KEYRING,
    Notifier,
    endpoint_event,
    job_event,
)

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


async def test_the_same_revision_again_does_not_re_enable_an_endpoint_disabled_here(
    notifier: Notifier,
) -> None:
    """The notifier disabled the endpoint after a 410; the change that made it arrives again
    (its group read the topic again after the inbox forgot it): the endpoint stays disabled."""
    await notifier.feed(endpoint_event("ep_4", URL, OLD_SECRET, revision=1))
    disabled = notifier.tables.disabled_endpoints
    await notifier.db.write(
        lambda c: c.execute(
            disabled.insert().values(
                endpoint_id="ep_4",
                account_id=ACCOUNT,
                disabled_at=datetime.now(UTC),
                reason="410 Gone",
            )
        )
    )
    await notifier.feed(endpoint_event("ep_4", URL, OLD_SECRET, revision=1))
    left = await notifier.db.read(lambda c: c.execute(sa.select(disabled.c.reason)).scalars().all())
    assert left == ["410 Gone"]


async def test_a_change_without_a_revision_has_only_its_time(notifier: Notifier) -> None:
    """From a gateway of the release before revisions, during an upgrade: applied when it is
    not older than the stored copy, ignored when it is (a dead letter of before the upgrade,
    replayed after a delete)."""
    now = datetime.now(UTC)
    old_change = at(endpoint_event("ep_5", URL + "/old", OLD_SECRET), now - timedelta(hours=1))
    await notifier.feed(at(endpoint_event("ep_5", URL, OLD_SECRET), now - timedelta(hours=2)))
    await notifier.feed(at(endpoint_event("ep_5", URL, deleted=True, revision=7), now))
    await notifier.feed(old_change)
    row = await endpoint_row(notifier, "ep_5")
    assert row.deleted and row.url == URL and row.revision == 7

    await notifier.feed(at(endpoint_event("ep_6", URL, OLD_SECRET, revision=2), now))
    await notifier.feed(at(endpoint_event("ep_6", URL + "/v2", NEW_SECRET), now))
    row = await endpoint_row(notifier, "ep_6")
    assert row.url == URL + "/v2" and KEYRING.open(row.sealed_secret) == NEW_SECRET
    assert row.revision == 2
