"""The group commit on a real SQLite database: writes that share a transaction, a transient
failure that sends the whole group again, and a write that fails alone. What a write changed
in memory is undone (`Unit.on_rollback`) whenever its part of the transaction rolls back, so
a retried write starts from what the database holds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from kiln_runtime.db import Database
from kiln_runtime.failures import TransientError
from kiln_runtime.group_commit import GroupCommit
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
    kept, failing = Counter("acct_a"), Counter("acct_a")  # the second row's key is taken

    async def second() -> int:
        await asyncio.sleep(0)  # queued behind the first: the same group
        return await group_commit(failing.add)

    results = await asyncio.gather(group_commit(kept.add), second(), return_exceptions=True)
    assert results[0] == 1
    assert isinstance(results[1], Exception)
    assert (kept.value, kept.undone) == (1, 0)
    assert (failing.value, failing.undone) == (0, 1)
    assert await rows(group_commit) == 1


async def rows(group_commit: GroupCommit) -> int:
    database = group_commit._db
    return int(
        await database.read(lambda c: c.execute(select(func.count()).select_from(counts)).scalar())
        or 0
    )
