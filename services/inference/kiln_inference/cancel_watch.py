"""Cancels of attempts this worker runs but whose partition another member now reads
(docs/architecture.md, "Inference").

An attempt keeps running here when its job's partition moves to another member (inference
scaled up or down; an attempt never holds a partition). The job's cancel then reaches the
partition's new member, which holds no item for it and only remembers the job as canceled,
while the attempt here would run on, complete, and be charged. So every worker also reads the
cancel topic whole, outside its consumer group, and cancels the attempts it holds itself, in a
transaction of its own, exactly as the group's delivery does. Whichever delivery comes second
finds no item and changes nothing (the canceled mark is an upsert; `CANCELED` is emitted only
by the delivery that deleted the item).

The reader commits nothing. It starts from when the oldest job held here was created (from the
end when none is held), so a cancel sent while this worker or the reader was down is read on
their return. It skips what it cannot decode: the group's consumer reads the same events with
the full rules (inbox, dead letters)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

from aiokafka import AIOKafkaConsumer

from kiln_contracts import Event, EventDecodeError, decode

log = logging.getLogger(__name__)

TOPIC = "job.cancel_requested"
ASSIGNMENT_WARNING_S = 30.0
CLOCK_MARGIN_S = 120.0


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
        held_since: Callable[[], datetime | None] = lambda: None,
        poll_timeout_ms: int = 500,
        retry_s: float = 1.0,
    ) -> None:
        self._bootstrap = bootstrap
        self._holds = holds
        self._cancel = cancel
        self._held_since = held_since
        self._poll_timeout_ms = poll_timeout_ms
        self._retry_s = retry_s
        self._canceling: dict[str, asyncio.Task[None]] = {}  # by job id
        self.ready = asyncio.Event()  # every partition assigned and its start resolved

    async def run(self) -> None:
        """Read until cancelled; a broken connection or client starts a fresh reader."""
        try:
            while True:
                try:
                    await self._read()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("the cancel reader stopped; starting it again")
                    self.ready.clear()
                    await asyncio.sleep(self._retry_s)
        finally:
            for task in self._canceling.values():
                task.cancel()
            await asyncio.gather(*self._canceling.values(), return_exceptions=True)

    async def _read(self) -> None:
        # Subscribed without a group, aiokafka assigns every partition of the topic (and those
        # added later); no offset is committed or read.
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
            await self._start_position(consumer)
            while True:
                fetched = await consumer.getmany(timeout_ms=self._poll_timeout_ms)
                events = [
                    event
                    for records in fetched.values()
                    for record in records
                    if (event := self._decoded(record.value)) is not None
                ]
                for event in cancels_to_handle(events, self._holds):
                    self._start_canceling(event)
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()

    async def _start_position(self, consumer: AIOKafkaConsumer) -> None:
        """Wait for the assignment, then start each partition at the first cancel since the
        oldest job held here was created (or at the end), and resolve that position."""
        waited = 0.0
        # Usually assigned once `start` returns; aiokafka has no public event to wait on.
        while not consumer.assignment():
            await asyncio.sleep(0.05)
            waited += 0.05
            if waited >= ASSIGNMENT_WARNING_S:
                log.warning("no partition of %s assigned yet (is the topic there?)", TOPIC)
                waited = 0.0
        partitions = consumer.assignment()
        since = self._held_since()
        if since is not None:
            # A job's creation and its cancel's record are stamped by different machines'
            # clocks: start a margin earlier (what is read needlessly is dropped by `holds`).
            at_ms = int((since.timestamp() - CLOCK_MARGIN_S) * 1000)
            found = await consumer.offsets_for_times(dict.fromkeys(partitions, at_ms))
            for tp, hit in found.items():
                if hit is not None:  # else nothing since: the end (auto_offset_reset)
                    consumer.seek(tp, hit.offset)
        for tp in partitions:
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

    def _start_canceling(self, event: Event) -> None:
        """Each cancel in a task of its own: one that keeps failing holds up no other."""
        running = self._canceling.get(event.job_id)
        if running is not None and not running.done():
            return
        task = asyncio.create_task(self._cancel_until_done(event), name=f"cancel {event.job_id}")
        self._canceling[event.job_id] = task
        task.add_done_callback(functools.partial(self._forget, event.job_id))

    def _forget(self, job_id: str, task: asyncio.Task[None]) -> None:
        if self._canceling.get(job_id) is task:
            del self._canceling[job_id]

    async def _cancel_until_done(self, event: Event) -> None:
        """A failed transaction is tried again while the attempt still runs here (it ends at
        the job's deadline at the latest): this reader commits no offset to come back to."""
        while self._holds(event.job_id):
            try:
                await self._cancel(event)
                log.info("canceled %s, read outside the consumer group", event.job_id)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("canceling %s failed; trying again", event.job_id)
                await asyncio.sleep(self._retry_s)
