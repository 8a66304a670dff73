"""The fence, on SQLite and PostgreSQL: a batch over many partitions moves every position in one
statement (the database's own count of matched rows says whether all moved), and a batch one of
whose positions another member moved rolls back naming that partition."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select

from kiln_runtime.batches import BatchTransaction, Delivery, EventHandlers, Fenced
from kiln_runtime.metrics import EVENTS_MISSED
from tests.integration.runtime.conftest import MESSAGING

pytestmark = pytest.mark.integration

GROUP = "fence-test"
TOPIC = "credits.granted"


def batch() -> BatchTransaction:
    return BatchTransaction(
        MESSAGING,
        EventHandlers({}),
        group=GROUP,
        service=GROUP,
        owner="member-a",
        lease=timedelta(seconds=30),
        clock=lambda: datetime.now(UTC),
        take_acked=list,
        return_acked=lambda _ids: None,
    )


def deliveries(offsets: dict[int, list[int]]) -> list[Delivery]:
    """Messages this group ignores (they move the position all the same)."""
    return [
        Delivery(topic=TOPIC, partition=p, offset=o, key=None, value=b"", skip="ignored")
        for p, os_ in offsets.items()
        for o in os_
    ]


def stored(engine: Engine) -> dict[int, int]:
    positions = MESSAGING.positions
    with engine.connect() as connection:
        rows = connection.execute(select(positions.c.partition, positions.c.next_offset))
        return {row.partition: row.next_offset for row in rows}


def test_a_batch_over_many_partitions_moves_each_position_once(engine: Engine) -> None:
    transaction = batch()
    with engine.begin() as connection:
        first = transaction.handle(connection, deliveries({p: [0] for p in range(6)}), {})
    assert first.positions == {(TOPIC, p): 1 for p in range(6)}
    expected = {(TOPIC, p): 1 for p in range(6)}
    with engine.begin() as connection:
        result = transaction.handle(
            connection, deliveries({p: [1, 2, 3 + p] for p in range(6)}), expected
        )
    assert result.positions == {(TOPIC, p): 4 + p for p in range(6)}
    assert stored(engine) == {p: 4 + p for p in range(6)}


def test_a_position_another_member_moved_fences_the_batch_and_names_it(engine: Engine) -> None:
    transaction = batch()
    with engine.begin() as connection:
        transaction.handle(connection, deliveries({p: [0] for p in range(4)}), {})
    positions = MESSAGING.positions
    with engine.begin() as connection:  # the other member took partition 2 further
        connection.execute(
            positions.update()
            .where(positions.c.consumer == GROUP, positions.c.partition == 2)
            .values(next_offset=9)
        )
    expected = {(TOPIC, p): 1 for p in range(4)}
    with pytest.raises(Fenced) as fenced, engine.begin() as connection:
        transaction.handle(connection, deliveries({p: [1, 2] for p in range(4)}), expected)
    assert fenced.value.partitions == {(TOPIC, 2)}
    assert stored(engine) == {0: 1, 1: 1, 2: 9, 3: 1}, "the batch rolled back"


def test_a_batch_that_starts_past_the_position_counts_what_was_never_read(engine: Engine) -> None:
    transaction = batch()
    missed = EVENTS_MISSED.labels(GROUP, TOPIC)
    before = missed._value.get()
    with engine.begin() as connection:
        transaction.handle(connection, deliveries({0: [0]}), {})
    with engine.begin() as connection:  # offsets 1..4 were deleted before they were read
        result = transaction.handle(connection, deliveries({0: [5, 6]}), {(TOPIC, 0): 1})
    assert result.positions == {(TOPIC, 0): 7}
    assert missed._value.get() - before == 4
