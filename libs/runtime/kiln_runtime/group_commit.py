"""Writes that do not come from a consumed event (an HTTP request, a finished inference attempt,
a webhook attempt, a timer) share transactions: whatever is asked for while one transaction runs
goes into the next one (docs/architecture.md, "Group commit").

Under load a hundred concurrent requests cost a few transactions instead of a hundred; alone, a
request waits for nobody. A group first runs without savepoints: a write that fails is rare, and
two savepoint statements per write cost more than the write's own statement. When one fails, the
transaction rolls back and the group runs again with a savepoint per write, so that it fails
alone.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection

from kiln_runtime.db import Database
from kiln_runtime.failures import Backoff, is_transient, may_be_one_writes
from kiln_runtime.messaging import MessagingTables
from kiln_runtime.outbox import AckedRow, OutboxPublisher
from kiln_runtime.unit import Unit, write_outbox

log = logging.getLogger(__name__)

T = TypeVar("T")

# How many writes tried alone by `_apart` must fail in a row for the database to be called away.
GIVE_UP_APART = 3


@dataclass
class _Request(Generic[T]):
    work: Callable[[Unit], T]
    future: asyncio.Future[T]
    unit: Unit | None = None
    result: Any = None
    error: BaseException | None = None


class _WriteFailed(Exception):
    """A write of a group run without savepoints failed: the group runs again with them."""


class GroupCommit:
    def __init__(
        self,
        database: Database,
        tables: MessagingTables,
        publisher: OutboxPublisher,
        *,
        service: str,
        clock: Callable[[], datetime],
        max_group: int = 256,
        transient_attempts: int = 5,
    ) -> None:
        self._db = database
        self._tables = tables
        self._publisher = publisher
        self._service = service
        self._clock = clock
        self._max_group = max_group
        self._transient_attempts = transient_attempts
        self._queue: list[_Request[Any]] = []
        self._drainer: asyncio.Future[None] | None = None
        self._draining = False

    async def __call__(self, work: Callable[[Unit], T]) -> T:
        """Run `work(unit)` in a transaction shared with other callers; its events are sent
        once it committed. Raises what `work` raised (its savepoint alone rolls back)."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append(_Request(work, future))
        if not self._draining:
            self._draining = True
            self._drainer = asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                group, self._queue = self._queue[: self._max_group], self._queue[self._max_group :]
                await self._commit_group(group)
        finally:
            self._draining = False

    async def _commit_group(
        self, group: Sequence[_Request[Any]], attempts: int | None = None
    ) -> bool:
        """Commit the group, retrying a transient failure; True if it committed. When the
        retries run out, each write of a larger group is tried once alone (`_apart`)."""
        attempts = self._transient_attempts if attempts is None else attempts
        attempt = 0
        savepoints = False
        while True:
            attempt += 1
            acked = self._publisher.take_acked()
            try:
                await self._db.write(
                    functools.partial(
                        self._run_all, group=group, acked=acked, savepoints=savepoints
                    )
                )
            except Exception as exc:
                self._publisher.return_acked(acked)
                for request in group:
                    if request.unit is not None:
                        request.unit.rolled_back()
                if isinstance(exc, _WriteFailed):
                    savepoints = True
                    attempt -= 1  # not a failure of the transaction: run it again at once
                    continue
                if is_transient(exc) and attempt < attempts:
                    log.warning(
                        "%s: group commit failed transiently; retry %d",
                        self._service,
                        attempt,
                        exc_info=True,
                    )
                    await asyncio.sleep(Backoff(0.05, 1.0).delay(attempt))
                    continue
                if may_be_one_writes(exc) and len(group) > 1:
                    await self._apart(group, exc)
                    return False
                for request in group:
                    if not request.future.done():
                        request.future.set_exception(exc)
                return False
            break
        for request in group:
            if request.error is None and request.unit is not None:
                self._publisher.publish(request.unit.outgoing)
        for request in group:
            if request.error is not None or request.unit is None:
                continue
            for callback in request.unit.callbacks():
                try:
                    callback()
                except Exception:
                    log.exception("%s: an after-commit callback failed", self._service)
        for request in group:
            if request.future.done():
                continue
            if request.error is not None:
                request.future.set_exception(request.error)
            else:
                request.future.set_result(request.result)
        return True

    async def _apart(self, group: Sequence[_Request[Any]], exc: BaseException) -> None:
        """A transient failure outlasted the group's retries, and it may be one write's own (a
        lock timeout on a row held elsewhere, a deadlock, a statement timeout), so each write
        is tried once alone and only those that fail again fail. After GIVE_UP_APART failures
        in a row the database is taken to be away, not one write: the rest fail at once
        instead of each waiting for its own failure."""
        log.warning(
            "%s: group commit still failing after %d attempts; trying its %d writes apart",
            self._service,
            self._transient_attempts,
            len(group),
        )
        failed_in_a_row = 0
        for request in group:
            if failed_in_a_row >= GIVE_UP_APART:
                if not request.future.done():
                    request.future.set_exception(exc)
                continue
            committed = await self._commit_group([request], attempts=1)
            failed_in_a_row = 0 if committed else failed_in_a_row + 1

    def _run_all(
        self,
        connection: Connection,
        group: Sequence[_Request[Any]],
        acked: list[AckedRow],
        savepoints: bool,
    ) -> None:
        now = self._clock()
        outgoing = []
        for request in group:
            unit = Unit(connection, now, self._service)
            request.unit, request.result, request.error = unit, None, None
            try:
                if savepoints:
                    with connection.begin_nested():
                        request.result = request.work(unit)
                else:
                    request.result = request.work(unit)
            except Exception as exc:
                if is_transient(exc):
                    raise  # the whole group goes again (every unit rolls back first)
                if not savepoints:
                    raise _WriteFailed from exc  # the same, with a savepoint per write
                unit.rolled_back()
                request.error = exc
                continue
            outgoing.extend(unit.outgoing)
        write_outbox(
            connection,
            self._tables,
            outgoing,
            owner=self._publisher.owner,
            now=now,
            lease=self._publisher.lease,
        )
        self._publisher.delete_rows(connection, acked)
