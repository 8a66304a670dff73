"""Creating the topics of the registry (co-partitioned: one partition count for all)."""

import logging
from collections.abc import Mapping

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from kiln_contracts import INTERNAL_TOPICS, KAFKA_TOPICS, InternalTopicSpec, KafkaTopicSpec

log = logging.getLogger(__name__)


def topic_plan(
    topics: Mapping[str, KafkaTopicSpec | InternalTopicSpec],
    partitions: int | None = None,
    replication_factor: int | None = None,
) -> list[NewTopic]:
    return [
        NewTopic(
            name=spec.name,
            num_partitions=partitions or spec.partitions,
            replication_factor=replication_factor or spec.replication_factor,
            topic_configs={"retention.ms": str(spec.retention_ms)},
        )
        for spec in topics.values()
    ]


async def ensure_topics(
    bootstrap: str, partitions: int | None = None, replication_factor: int | None = None
) -> list[str]:
    """Create the registry's missing topics; returns the names created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        every: dict[str, KafkaTopicSpec | InternalTopicSpec] = {**KAFKA_TOPICS, **INTERNAL_TOPICS}
        missing = [
            t for t in topic_plan(every, partitions, replication_factor) if t.name not in existing
        ]
        if missing:
            await admin.create_topics(missing, timeout_ms=30000)
            log.info("created topics: %s", ", ".join(t.name for t in missing))
        return [t.name for t in missing]
    finally:
        await admin.close()
