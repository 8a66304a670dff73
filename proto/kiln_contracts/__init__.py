"""Kiln's event contracts: generated protobuf messages, the topic registry and the codec.

Services import event shapes from here and never redefine them (see /proto and
docs/architecture.md, "Event contracts").
"""

from kiln_contracts.codec import (
    Event,
    EventDecodeError,
    decode,
    decode_envelope,
    encode,
    event_of,
    from_json,
    new_event,
    timestamp,
    to_json,
)
from kiln_contracts.registry import (
    INTERNAL_TOPICS,
    KAFKA_TOPICS,
    RETIRED_TOPICS,
    TOPICS,
    InternalTopicSpec,
    KafkaTopicSpec,
    TopicSpec,
    current_topic,
    load_topics,
    message_class,
    topic_of,
)
from kiln_contracts.v1 import common_pb2, credits_pb2, envelope_pb2, jobs_pb2, webhooks_pb2

__all__ = [
    "INTERNAL_TOPICS",
    "KAFKA_TOPICS",
    "RETIRED_TOPICS",
    "TOPICS",
    "Event",
    "EventDecodeError",
    "InternalTopicSpec",
    "KafkaTopicSpec",
    "TopicSpec",
    "common_pb2",
    "credits_pb2",
    "current_topic",
    "decode",
    "decode_envelope",
    "encode",
    "envelope_pb2",
    "event_of",
    "from_json",
    "jobs_pb2",
    "load_topics",
    "message_class",
    "new_event",
    "timestamp",
    "to_json",
    "topic_of",
    "webhooks_pb2",
]
