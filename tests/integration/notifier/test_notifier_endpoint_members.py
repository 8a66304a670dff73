"""Two notifier members storing one new endpoint at once (a rebalance hands the partition over
while the old member still writes): the second waits for the first's row and then judges its
change against it, on SQLite and PostgreSQL. It used to read first and insert after, so on
PostgreSQL the second member's insert failed on the duplicate key and its batch with it."""

import threading
import time
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from kiln_notifier import repository
from kiln_notifier.migrate import upgrade_connection
from kiln_notifier.tables import make_tables

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TABLES = make_tables()
NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def change(revision: int, url: str) -> repository.EndpointChange:
    return repository.EndpointChange(
        endpoint_id="we_1",
        account_id="acct_1",
        url=url,
        sealed_secret="",
        event_types=[],
        is_default=False,
        deleted=False,
        changed_at=NOW,
        revision=revision,
    )


def store_while_another_member_inserts(
    engine: sa.Engine, first: repository.EndpointChange, second: repository.EndpointChange
) -> bool | BaseException:
    """`first` is inserted in a transaction that stays open while `second` is stored from
    another connection; what storing `second` returned, or raised."""
    outcome: list[bool | BaseException] = []

    def other_member() -> None:
        try:
            with engine.begin() as connection:
                outcome.append(repository.upsert_endpoint(connection, TABLES, second))
        except BaseException as exc:
            outcome.append(exc)

    with engine.begin() as connection:
        assert repository.upsert_endpoint(connection, TABLES, first)
        member = threading.Thread(target=other_member)
        member.start()
        time.sleep(0.5)  # the other member is at the row (PostgreSQL) or the lock (SQLite)
    member.join(timeout=30)
    assert outcome, "the other member did not finish"
    return outcome[0]


def stored(engine: sa.Engine) -> tuple[str, int]:
    with engine.connect() as connection:
        row = connection.execute(sa.select(TABLES.endpoints)).one()
    return row.url, row.revision


def test_a_later_change_stored_at_once_by_another_member_wins(engine: sa.Engine) -> None:
    with engine.begin() as connection:
        upgrade_connection(connection)
    outcome = store_while_another_member_inserts(
        engine, change(1, "https://hooks.example/a"), change(2, "https://hooks.example/b")
    )
    assert outcome is True
    assert stored(engine) == ("https://hooks.example/b", 2)


def test_an_earlier_change_stored_at_once_by_another_member_changes_nothing(
    engine: sa.Engine,
) -> None:
    with engine.begin() as connection:
        upgrade_connection(connection)
    outcome = store_while_another_member_inserts(
        engine, change(2, "https://hooks.example/b"), change(1, "https://hooks.example/a")
    )
    assert outcome is False
    assert stored(engine) == ("https://hooks.example/b", 2)
