"""Cancels of attempts this worker runs but whose partition another member now reads
(docs/architecture.md, "Inference").

An attempt keeps running here when its job's partition moves to another member (inference
scaled up or down; an attempt never holds a partition). The job's cancel then reaches the
partition's new member, which holds no item for it and only remembers the job as canceled,
while the attempt here would run on, complete, and be charged. So every worker also reads the
cancel topic whole, outside its consumer group, from the end, and cancels the attempts it holds
itself, in a transaction of its own, exactly as the group's delivery does. Whichever delivery
comes second finds no item and changes nothing (the canceled mark is an upsert).

This reader is an addition, not the record: it commits nothing, starts at the end, and skips
what it cannot decode, because the group's consumer reads the same events with the full rules
(inbox, dead letters)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer

from kiln_contracts import Event, EventDecodeError, decode

log = logging.getLogger(__name__)

TOPIC = "job.cancel_requested"


def cancels_to_handle(events: list[Event], holds: Callable[[str], bool]) -> list[Event]:
    """The cancels of jobs whose attempt this worker holds now, once per job."""
    seen: set[str] = set()
    wanted: list[Event] = []
    for event in events:
        if event.job_id and event.job_id not in seen and holds(event.job_id):
            seen.add(event.job_id)
            wanted.append(event)
    return wanted


class CancelWatch:
    def __init__(
        self,
        bootstrap: str,
        holds: Callable[[str], bool],
        cancel: Callable[[Event], Awaitable[None]],
        *,
        poll_timeout_ms: int = 500,
        retry_s: float = 1.0,
    ) -> None:
        self._bootstrap = bootstrap
        self._holds = holds
        self._cancel = cancel
        self._poll_timeout_ms = poll_timeout_ms
        self._retry_s = retry_s
        self.ready = asyncio.Event()  # reading from the end of every partition

    async def run(self) -> None:
        """Read until cancelled; a broken connection or client starts a fresh reader (from
        the end again: what went by meanwhile still reaches the group's consumer)."""
        while True:
            try:
                await self._read()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the cancel reader stopped; starting it again")
                self.ready.clear()
                await asyncio.sleep(self._retry_s)

    async def _read(self) -> None:
        # Subscribed without a group, aiokafka assigns every partition of the topic (and those
        # added later), each from its end: no offset is committed or read.
        consumer = AIOKafkaConsumer(
            TOPIC,
            bootstrap_servers=self._bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            fetch_max_wait_ms=self._poll_timeout_ms,
        )
        try:
            await consumer.start()
            await self._from_the_end(consumer)
            while True:
                fetched = await consumer.getmany(timeout_ms=self._poll_timeout_ms)
                events = [
                    event
                    for records in fetched.values()
                    for record in records
                    if (event := self._decoded(record.value)) is not None
                ]
                for event in cancels_to_handle(events, self._holds):
                    await self._cancel_until_done(event)
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()

    async def _from_the_end(self, consumer: AIOKafkaConsumer) -> None:
        """Wait for the assignment and resolve where "the end" is now: a cancel sent after
        `ready` is set is read."""
        # Usually assigned once `start` returns; aiokafka has no public event to wait on.
        while not consumer.assignment():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        for tp in consumer.assignment():
            await consumer.position(tp)
        self.ready.set()

    @staticmethod
    def _decoded(raw: bytes | None) -> Event | None:
        if raw is None:
            return None
        try:
            return decode(raw)
        except EventDecodeError:
            return None  # the group's consumer dead-letters it

    async def _cancel_until_done(self, event: Event) -> None:
        """A failed transaction is tried again while the attempt still runs here: this
        reader's only chance at the cancel (it commits no offset to come back to)."""
        while self._holds(event.job_id):
            try:
                await self._cancel(event)
                log.info("canceled %s, whose partition another member reads", event.job_id)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("canceling %s failed; trying again", event.job_id)
                await asyncio.sleep(self._retry_s)
