"""Reading whole topics from a test's broker (no consumer group), for tests that check what a
service published."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition

from kiln_contracts import Event, EventDecodeError, decode


async def _read(bootstrap: str, topics: Iterable[str], timeout_s: float) -> list[Event]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        # Metadata of every topic: `partitions_for_topic` knows only topics the client asked
        # about, and `topics()` does not update it.
        cluster = await consumer._client.fetch_all_metadata()
        tps = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(cluster.partitions_for_topic(topic) or ())
        ]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        events: list[Event] = []
        async with asyncio.timeout(timeout_s):
            while any([await consumer.position(tp) < ends[tp] for tp in tps]):
                for messages in (await consumer.getmany(timeout_ms=500)).values():
                    for message in messages:
                        try:
                            events.append(decode(message.value or b""))
                        except EventDecodeError:
                            continue
        return events
    finally:
        # A consumer without a group cancels its offset-reset task as it stops, and that
        # cancellation surfaces here (aiokafka 0.14); the consumer is stopped all the same.
        with contextlib.suppress(asyncio.CancelledError):
            await consumer.stop()


def read_events(bootstrap: str, topics: Iterable[str], timeout_s: float = 60.0) -> list[Event]:
    """Every event of `topics`, in each partition's order (copies included)."""
    return asyncio.run(_read(bootstrap, list(topics), timeout_s))


def distinct_events(bootstrap: str, topics: Iterable[str], timeout_s: float = 60.0) -> list[Event]:
    """Every event of `topics` once (a copy with an event id seen before is dropped)."""
    seen: set[str] = set()
    out = []
    for event in read_events(bootstrap, topics, timeout_s):
        if event.event_id not in seen:
            seen.add(event.event_id)
            out.append(event)
    return out
