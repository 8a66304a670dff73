"""The group commit on a real SQLite database: writes that share a transaction, a transient
failure that sends the whole group again, a write that fails alone, and a transient failure
that outlasts the retries failing only the write it belongs to. What a write changed
in memory is undone (`Unit.on_rollback`) whenever its part of the transaction rolls back, so
a retried write starts from what the database holds."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import IntegrityError, OperationalError

from kiln_runtime.db import Database
from kiln_runtime.failures import TransientError
from kiln_runtime.group_commit import GIVE_UP_APART, GroupCommit
from kiln_runtime.messaging import utcnow
from kiln_runtime.outbox import OutboxPublisher
from kiln_runtime.unit import Unit
from tests.integration.runtime.conftest import MESSAGING, counts, metadata

pytestmark = pytest.mark.integration


@pytest.fixture
async def group_commit(tmp_path: Path) -> AsyncIterator[GroupCommit]:
    database = Database(f"sqlite:///{tmp_path}/toy.db", service="toy")
    metadata.create_all(database.engine)
    publisher = OutboxPublisher(
        database,
        MESSAGING,
        None,  # nothing is sent: the rows stay in the outbox
        service="toy",
        owner="member-a",
        lease=timedelta(seconds=30),
        recover_interval_s=60,
    )
    yield GroupCommit(database, MESSAGING, publisher, service="toy", clock=utcnow)
    database.engine.dispose()


class Counter:
    """In-memory state a write changes along with its row, as the scheduler's queue does."""

    def __init__(self, account: str) -> None:
        self.account = account
        self.value = 0
        self.undone = 0

    def add(self, unit: Unit) -> int:
        self.value += 1
        unit.on_rollback(self.undo)
        unit.connection.execute(counts.insert().values(account_id=self.account, handled=1))
        return self.value

    def undo(self) -> None:
        self.value -= 1
        self.undone += 1


async def test_a_transient_failure_undoes_every_write_of_the_group_before_the_retry(
    group_commit: GroupCommit,
) -> None:
    counter = Counter("acct_a")
    failures = {"left": 1}

    def flaky(unit: Unit) -> str:
        if failures["left"]:
            failures["left"] -= 1
            raise TransientError("database away")
        unit.connection.execute(counts.insert().values(account_id="acct_b", handled=1))
        return "ok"

    added, flaked = await asyncio.gather(group_commit(counter.add), group_commit(flaky))
    assert (added, flaked) == (1, "ok")
    assert counter.value == 1 and counter.undone == 1, "undone once, then done again"
    assert await rows(group_commit) == 2


async def test_a_write_that_fails_alone_is_undone_alone(group_commit: GroupCommit) -> None:
    """The group ran without savepoints first; the failure sent it again with one per write,
    where the other write commits (undone once with the first run, then done again)."""
    kept, failing = Counter("acct_a"), Counter("acct_a")  # the second row's key is taken
    statements = _statements(group_commit)
    # Both are asked for before the group starts: the same group, the failing write second.
    results = await asyncio.gather(
        group_commit(kept.add), group_commit(failing.add), return_exceptions=True
    )
    assert results[0] == 1
    assert isinstance(results[1], IntegrityError)
    assert (kept.value, kept.undone) == (1, 1)
    assert (failing.value, failing.undone) == (0, 2)
    assert await rows(group_commit) == 1
    assert sum(s.startswith("SAVEPOINT") for s in statements) == 2, statements


async def test_a_group_whose_writes_all_succeed_runs_without_savepoints(
    group_commit: GroupCommit,
) -> None:
    counters = [Counter(f"acct_{n}") for n in range(5)]
    statements = _statements(group_commit)
    results = await asyncio.gather(*(group_commit(c.add) for c in counters))
    assert results == [1] * 5
    assert await rows(group_commit) == 5
    assert [c.undone for c in counters] == [0] * 5
    assert not [s for s in statements if s.startswith(("SAVEPOINT", "RELEASE"))], statements
    assert sum(s.startswith("BEGIN") for s in statements) <= 2, "the writes shared transactions"


async def test_a_write_whose_transient_failure_persists_fails_alone(
    group_commit: GroupCommit,
) -> None:
    """One write keeps failing transiently (as a lock timeout on a row held elsewhere does):
    once the group's retries run out, each write is tried alone and only that one fails."""
    first, last = Counter("acct_a"), Counter("acct_b")

    def stuck(unit: Unit) -> str:
        raise TransientError("lock timeout on a row held elsewhere")

    results = await asyncio.gather(
        group_commit(first.add), group_commit(stuck), group_commit(last.add),
        return_exceptions=True,
    )  # fmt: skip
    assert results[0] == 1 and results[2] == 1
    assert isinstance(results[1], TransientError)
    assert (first.value, last.value) == (1, 1)
    assert await rows(group_commit) == 2


async def test_when_the_database_is_away_the_writes_fail_without_each_trying_alone(
    group_commit: GroupCommit,
) -> None:
    """Every write fails: after the group's retries, GIVE_UP_APART writes tried alone fail in
    a row, and the others fail at once rather than each waiting for its own failure."""
    calls = [0] * 6

    def away(index: int) -> Callable[[Unit], None]:
        def write(unit: Unit) -> None:
            calls[index] += 1
            raise TransientError("database away")

        return write

    results = await asyncio.gather(
        *(group_commit(away(i)) for i in range(6)), return_exceptions=True
    )
    assert all(isinstance(r, TransientError) for r in results), results
    # The group's five attempts stop at the first write; then three are tried alone.
    assert GIVE_UP_APART == 3
    assert calls == [5 + 1, 1, 1, 0, 0, 0]
    assert await rows(group_commit) == 0


async def test_failures_in_a_row_are_counted_from_the_last_write_that_committed(
    group_commit: GroupCommit,
) -> None:
    """A write commits alone, then three fail in a row: the database went away meanwhile, and
    the write after them fails without being tried."""
    first, after = Counter("acct_a"), Counter("acct_b")
    calls = {"stuck": 0}

    def stuck(unit: Unit) -> None:
        calls["stuck"] += 1
        raise TransientError("database away")

    results = await asyncio.gather(
        group_commit(first.add), group_commit(stuck), group_commit(stuck), group_commit(stuck),
        group_commit(after.add), return_exceptions=True,
    )  # fmt: skip
    assert results[0] == 1
    assert all(isinstance(r, TransientError) for r in results[1:]), results
    assert calls["stuck"] == 5 + 3  # the group's attempts stop at the first; then each alone
    assert (first.value, after.value, after.undone) == (1, 0, 0)  # `after` never ran
    assert await rows(group_commit) == 1


async def test_a_locked_database_fails_the_group_without_trying_writes_alone(
    group_commit: GroupCommit,
) -> None:
    """SQLite's "database is locked" belongs to the whole database, never to one write: when
    it outlasts the retries, the group fails as one."""
    calls = [0, 0]

    def locked(index: int) -> Callable[[Unit], None]:
        def write(unit: Unit) -> None:
            calls[index] += 1
            raise OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked"))

        return write

    results = await asyncio.gather(
        group_commit(locked(0)), group_commit(locked(1)), return_exceptions=True
    )
    assert all(isinstance(r, OperationalError) for r in results), results
    assert calls == [5, 0]


def _statements(group_commit: GroupCommit) -> list[str]:
    """Every statement the group commit's engine runs from now on."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement.lstrip().upper())

    event.listen(group_commit._db.engine, "before_cursor_execute", record)
    return seen


async def rows(group_commit: GroupCommit) -> int:
    database = group_commit._db
    return int(
        await database.read(lambda c: c.execute(select(func.count()).select_from(counts)).scalar())
        or 0
    )
