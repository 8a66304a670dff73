"""Acknowledged outbox rows are deleted by id and event id, on SQLite and PostgreSQL: SQLite
hands a deleted row's id to the next row, so an id acknowledged a second time (a row the
recovery round sent again while its first send was slow) must not delete the newer row."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select

from kiln_runtime.outbox import delete_acked
from kiln_runtime.unit import OutgoingEvent, write_outbox
from tests.integration.runtime.conftest import MESSAGING

pytestmark = pytest.mark.integration


def written(engine: Engine) -> OutgoingEvent:
    row = OutgoingEvent(topic="credits.applied", key="acct", event_id=str(uuid.uuid4()), value=b"x")
    with engine.begin() as connection:
        write_outbox(
            connection,
            MESSAGING,
            [row],
            owner="member-a",
            now=datetime.now(UTC),
            lease=timedelta(seconds=10),
        )
    assert row.row_id is not None
    return row


def event_ids(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return list(connection.execute(select(MESSAGING.outbox.c.event_id)).scalars())


def test_a_second_ack_of_a_deleted_row_leaves_a_newer_row_alone(engine: Engine) -> None:
    first = written(engine)
    ack = (first.row_id or 0, first.event_id)
    with engine.begin() as connection:
        delete_acked(connection, MESSAGING, [ack])
    newer = written(engine)
    if engine.dialect.name == "sqlite":
        assert newer.row_id == first.row_id, "SQLite reuses the id (what this guards against)"
    with engine.begin() as connection:
        delete_acked(connection, MESSAGING, [ack])  # the first row's second acknowledgement
    assert event_ids(engine) == [newer.event_id]
    with engine.begin() as connection:
        delete_acked(connection, MESSAGING, [(newer.row_id or 0, newer.event_id)])
    assert event_ids(engine) == []
