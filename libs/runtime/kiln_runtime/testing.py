"""Driving a service's handlers without a broker, the way the consumer does (one transaction
per batch, positions, inbox, outbox rows left in the table), for tests of handlers on a real
database. The consumer itself is tested on a real broker (tests/integration/runtime)."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TypeVar

from sqlalchemy import Connection

from kiln_contracts import Event, encode, topic_of
from kiln_runtime.batches import BatchTransaction, Delivery, EventHandlers, decode_deliveries
from kiln_runtime.db import Database
from kiln_runtime.messaging import MessagingTables, utcnow
from kiln_runtime.unit import Unit, write_outbox

T = TypeVar("T")


class _Rehearsed(Exception):
    """Rolls back a write's rehearsal (`EventDriver.write`)."""


# Every call of every driver reads a partition of its own: no two share a position.
_PARTITIONS = itertools.count(1)


class EventDriver:
    def __init__(
        self,
        database: Database,
        tables: MessagingTables,
        handlers: EventHandlers,
        *,
        group: str,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = database
        self.group = group
        self._tables = tables
        self._clock = clock
        self.clock = clock
        self._handlers = handlers
        self._batch = BatchTransaction(
            tables,
            handlers,
            group=group,
            service=group,
            owner="test-driver",
            lease=timedelta(hours=1),
            clock=clock,
            take_acked=list,
            return_acked=lambda _ids: None,
        )
        self.callbacks_run = 0
        self.rehearse_writes = True

    async def process(self, event: Event) -> bool:
        """Handle one event in its own transaction; False when it was a duplicate or is not
        handled here."""
        [outcome] = await self.process_batch([event])
        return outcome == "processed"

    async def process_batch(self, events: Sequence[Event]) -> list[str]:
        """Handle events as one polled batch (one transaction); their outcomes in order. Each
        call reads a partition of its own, so calls may run side by side."""
        partition = next(_PARTITIONS)

        def decoded_batch() -> list[Delivery]:
            deliveries = [
                Delivery(
                    topic=topic_of(event.type),
                    partition=partition,
                    offset=offset,
                    key=event.account_id.encode(),
                    value=encode(event.envelope),
                )
                for offset, event in enumerate(events)
            ]
            return decode_deliveries(
                deliveries, group=self.group, event_types=self._handlers.event_types
            )

        if self.rehearse_writes:
            await self._rehearse_batch(decoded_batch())
        decoded = decoded_batch()
        result = await self.db.write(lambda c: self._batch.handle(c, decoded, {}))
        for callback in result.callbacks:
            callback()
            self.callbacks_run += 1
        outcomes = []
        for d in decoded:
            if d.skip is not None:
                outcomes.append(d.skip)
            elif d.error is not None:
                outcomes.append("dead_lettered")
            else:
                outcomes.append("processed")
        return outcomes

    async def write(self, work: Callable[[Unit], T]) -> T:
        """Run `work(unit)` in its own transaction with its outbox rows, as the runtime's
        group commit does for writes no event caused (a timer, an HTTP request).

        With `rehearse_writes` (the default) `work` runs first in a transaction that rolls
        back, its units told so: the group commit runs a write again when another write of its
        group failed or the database failed transiently, and a write must come out of that as
        if it ran once (docs/architecture.md, "Group commit"). `process_batch` rehearses each
        batch the same way (the consumer handles a batch again after a transient failure)."""
        if self.rehearse_writes:
            await self._rehearse(work)

        def run(connection: object) -> T:
            unit = Unit(connection, self._clock(), self.group)  # type: ignore[arg-type]
            try:
                result = work(unit)
            except BaseException:
                unit.rolled_back()
                raise
            write_outbox(
                unit.connection,
                self._tables,
                unit.outgoing,
                owner="test-driver",
                now=unit.now,
                lease=timedelta(hours=1),
            )
            for callback in unit.callbacks():
                callback()
            return result

        return await self.db.write(run)

    async def _rehearse_batch(self, decoded: list[Delivery]) -> None:
        """The batch once in a transaction that rolls back, its handlers told so (`on_rollback`),
        as when the consumer handles a batch again after a transient failure."""

        def run(connection: Connection) -> None:
            self._batch.handle(connection, decoded, {})
            self._batch.rolled_back()

        await self._rolled_back(run)

    async def _rehearse(self, work: Callable[[Unit], T]) -> None:
        def run(connection: Connection) -> None:
            unit = Unit(connection, self._clock(), self.group)
            try:
                work(unit)
            finally:
                unit.rolled_back()

        await self._rolled_back(run)

    async def _rolled_back(self, run: Callable[[Connection], None]) -> None:
        def rehearsal(connection: Connection) -> None:
            run(connection)
            raise _Rehearsed

        # _Rehearsed, or an error of the work: the real run meets it again, or does not.
        with contextlib.suppress(Exception):
            await self.db.write(rehearsal)

    async def read(self, work: Callable[[Connection], T]) -> T:
        return await self.db.read(work)
