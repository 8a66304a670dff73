"""The dead-letter topic (docs/architecture.md, "Dead letters").

An event that cannot be decoded, or that fails deterministically, is written to the topic
`kiln.dead_letters` with its original key and bytes, and headers naming the consumer group,
its topic, partition and offset, the error, and when. It is written through the outbox in the
same transaction that moves the consumer's position past it, so it is never lost and never
skipped silently (`kiln_events_dead_lettered_total` counts it).

`kiln-admin dlq list` reads the topic; `kiln-admin dlq replay` sends a dead letter back to its
topic with a `kiln-replay-for` header naming the group it failed in: that group handles it
again (its inbox has no row for it), every other group skips it (it handled the original).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime

from aiokafka import AIOKafkaConsumer, TopicPartition

from kiln_contracts import EventDecodeError, current_topic, decode
from kiln_runtime.outbox import start_producer

DEAD_LETTER_TOPIC = "kiln.dead_letters"

H_GROUP = "kiln-dlq-group"
H_TOPIC = "kiln-dlq-topic"
H_PARTITION = "kiln-dlq-partition"
H_OFFSET = "kiln-dlq-offset"
H_ERROR = "kiln-dlq-error"
H_AT = "kiln-dlq-at"
H_EVENT_ID = "kiln-dlq-event-id"
H_EVENT_TYPE = "kiln-dlq-event-type"
H_REPLAY_FOR = "kiln-replay-for"
H_REPLAY_OF = "kiln-replay-of"


def dead_letter_headers(
    *,
    group: str,
    topic: str,
    partition: int,
    offset: int,
    error: str,
    at: datetime,
    event_id: str = "",
    event_type: str = "",
) -> dict[str, bytes]:
    return {
        H_GROUP: group.encode(),
        H_TOPIC: topic.encode(),
        H_PARTITION: str(partition).encode(),
        H_OFFSET: str(offset).encode(),
        H_ERROR: error.encode(),
        H_AT: at.isoformat().encode(),
        H_EVENT_ID: event_id.encode(),
        H_EVENT_TYPE: event_type.encode(),
    }


def dead_letter_id(group: str, topic: str, partition: int, offset: int) -> str:
    """One id per failed delivery, whatever the event inside (it may not even decode)."""
    return f"dlq:{group}:{topic}:{partition}:{offset}"


def replay_target(headers: Iterable[tuple[str, bytes]] | None) -> str | None:
    """The group a replayed event is meant for, or None for an ordinary event."""
    for name, value in headers or ():
        if name == H_REPLAY_FOR:
            return value.decode(errors="replace")
    return None


@dataclass(frozen=True)
class DeadLetter:
    """One entry of the dead-letter topic, as `kiln-admin dlq list` shows it."""

    dlq_partition: int
    dlq_offset: int
    group: str
    topic: str
    partition: int
    offset: int
    error: str
    at: str
    event_id: str
    event_type: str
    key: str
    size_bytes: int

    @property
    def ref(self) -> str:
        """How to name it to `kiln-admin dlq replay`: `<dlq partition>:<dlq offset>`."""
        return f"{self.dlq_partition}:{self.dlq_offset}"

    def as_json(self) -> dict[str, object]:
        return {"ref": self.ref, **asdict(self)}


def _headers(pairs: Sequence[tuple[str, bytes]] | None) -> dict[str, str]:
    return {name: value.decode(errors="replace") for name, value in pairs or ()}


def _entry(
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]] | None,
) -> DeadLetter:
    h = _headers(headers)
    event_id, event_type = h.get(H_EVENT_ID, ""), h.get(H_EVENT_TYPE, "")
    if not event_id and value:
        try:
            event = decode(value)
            event_id, event_type = event.event_id, event.type
        except EventDecodeError:
            pass
    return DeadLetter(
        dlq_partition=partition,
        dlq_offset=offset,
        group=h.get(H_GROUP, ""),
        topic=h.get(H_TOPIC, ""),
        partition=int(h.get(H_PARTITION, "-1") or -1),
        offset=int(h.get(H_OFFSET, "-1") or -1),
        error=h.get(H_ERROR, ""),
        at=h.get(H_AT, ""),
        event_id=event_id,
        event_type=event_type,
        key=(key or b"").decode(errors="replace"),
        size_bytes=len(value or b""),
    )


@dataclass(frozen=True)
class _Raw:
    entry: DeadLetter
    key: bytes | None
    value: bytes | None


async def _read_all(bootstrap: str, timeout_s: float = 10.0) -> list[_Raw]:
    """Every message of the dead-letter topic, read without a consumer group."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(DEAD_LETTER_TOPIC)
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(DEAD_LETTER_TOPIC) or set()
        tps = [TopicPartition(DEAD_LETTER_TOPIC, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[_Raw] = []
        deadline = asyncio.get_running_loop().time() + timeout_s
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("the dead-letter topic could not be read to its end")
            batches = await consumer.getmany(timeout_ms=500)
            for tp, messages in batches.items():
                for m in messages:
                    out.append(
                        _Raw(
                            _entry(tp.partition, m.offset, m.key, m.value, m.headers),
                            m.key,
                            m.value,
                        )
                    )
        out.sort(key=lambda r: (r.entry.at, r.entry.dlq_partition, r.entry.dlq_offset))
        return out
    finally:
        # A consumer without a group cancels its offset-reset task as it stops, and that
        # cancellation surfaces here (aiokafka 0.14); the consumer is stopped all the same.
        with contextlib.suppress(asyncio.CancelledError):
            await consumer.stop()


async def list_dead_letters(
    bootstrap: str, *, group: str | None = None, topic: str | None = None
) -> list[DeadLetter]:
    return [
        raw.entry
        for raw in await _read_all(bootstrap)
        if (group is None or raw.entry.group == group)
        and (topic is None or raw.entry.topic == topic)
    ]


async def replay_dead_letters(
    bootstrap: str,
    *,
    refs: Sequence[str] = (),
    group: str | None = None,
    topic: str | None = None,
) -> list[DeadLetter]:
    """Send dead letters back to their topics, each for the group it failed in. `refs` picks
    entries by `<partition>:<offset>`; else every entry matching `group` / `topic`."""
    wanted = set(refs)
    chosen = [
        raw
        for raw in await _read_all(bootstrap)
        if (not wanted or raw.entry.ref in wanted)
        and (group is None or raw.entry.group == group)
        and (topic is None or raw.entry.topic == topic)
        and raw.value is not None
        and raw.entry.topic
        and raw.entry.group
    ]
    missing = wanted - {raw.entry.ref for raw in chosen}
    if missing:
        raise KeyError(f"no dead letter {', '.join(sorted(missing))}")
    if not chosen:
        return []
    producer = await start_producer(bootstrap, attempts=10)
    try:
        futures = [
            await producer.send(
                current_topic(raw.entry.topic),  # a topic retired since: its successor
                value=raw.value,
                key=raw.key,
                headers=[
                    (H_REPLAY_FOR, raw.entry.group.encode()),
                    (H_REPLAY_OF, raw.entry.ref.encode()),
                ],
            )
            for raw in chosen
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [raw.entry for raw in chosen]


def format_entries(entries: Sequence[DeadLetter], *, as_json: bool) -> str:
    if as_json:
        return json.dumps([e.as_json() for e in entries], indent=2)
    if not entries:
        return "no dead letters"
    lines = [f"{'ref':<10} {'group':<10} {'topic':<22} {'part:offset':<12} {'event':<38} error"]
    for e in entries:
        lines.append(
            f"{e.ref:<10} {e.group:<10} {e.topic:<22} {e.partition}:{e.offset:<10} "
            f"{e.event_id:<38} {e.error}"
        )
    return "\n".join(lines)
