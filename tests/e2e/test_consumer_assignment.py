"""Several members of one aiokafka consumer group (several inference workers, say) must each get
the same partition numbers of every topic they read: a job's events are keyed by account, so the
worker running a job gets its `job.dispatched` and must also get its `job.cancel_requested`.
Checked on the real broker with the assignors KafkaEventConsumer uses."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer

from kiln_runtime.consumer import PARTITION_ASSIGNORS
from tests.stack_support import LocalStack

pytestmark = pytest.mark.e2e

TOPICS = ("job.dispatched", "job.cancel_requested")


async def assignments(bootstrap: str, members: int) -> list[dict[str, set[int]]]:
    group = f"assignment-test-{uuid.uuid4().hex[:8]}"
    consumers = [
        AIOKafkaConsumer(
            *TOPICS,
            bootstrap_servers=bootstrap,
            group_id=group,
            enable_auto_commit=False,
            partition_assignment_strategy=PARTITION_ASSIGNORS,
        )
        for _ in range(members)
    ]
    await asyncio.gather(*(c.start() for c in consumers))
    try:
        async with asyncio.timeout(60):
            while True:
                # Polling drives each member's part in the group's rebalances.
                await asyncio.gather(*(c.getmany(timeout_ms=200) for c in consumers))
                got = [c.assignment() for c in consumers]
                if all(got) and sum(len(a) for a in got) == 6 * len(TOPICS):
                    break
        return [
            {topic: {tp.partition for tp in assigned if tp.topic == topic} for topic in TOPICS}
            for assigned in got
        ]
    finally:
        await asyncio.gather(*(c.stop() for c in consumers))


@pytest.mark.parametrize("members", [2, 4])
async def test_every_member_gets_the_same_partitions_of_every_topic(
    local_stack: LocalStack, members: int
) -> None:
    for member in await assignments(local_stack.kafka_bootstrap, members):
        dispatched, cancels = (member[topic] for topic in TOPICS)
        assert dispatched and dispatched == cancels, member
