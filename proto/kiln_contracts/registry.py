"""The topic registry (`topics.toml`): every event type's payload message, owner, consumers, the
Kafka topic that carries it and that topic's settings.

`TOPICS` is keyed by event type (`Envelope.type`); the codec maps a type to its generated
message class with `message_class`. Most types travel on a topic of their own name; the three
ends of a job (`job.completed`, `job.failed`, `job.canceled`) share `job.ended`, so that every
consumer sees a job's ends in one order (docs/architecture.md, "One order for a job's ends").
Topic creation reads `KAFKA_TOPICS`, one entry per Kafka topic.
"""

from __future__ import annotations

import importlib
import pkgutil
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

from google.protobuf.message import Message

PACKAGE_DIR = Path(__file__).resolve().parent
TOPICS_PATH = PACKAGE_DIR / "topics.toml"
EXAMPLES_DIR = PACKAGE_DIR / "examples"
GENERATED_PACKAGE = "kiln_contracts.v1"


@dataclass(frozen=True)
class TopicSpec:
    name: str  # the event type in Envelope.type
    message: str  # the payload message's name in the kiln.events.v1 proto package
    owner: str  # the service that produces it
    consumers: tuple[str, ...]
    partitions: int
    replication_factor: int
    retention_ms: int
    key: str  # the envelope field used as the Kafka key
    topic: str = ""  # the Kafka topic that carries it (its own name unless the table says)

    def __post_init__(self) -> None:
        if not self.topic:
            object.__setattr__(self, "topic", self.name)


@dataclass(frozen=True)
class KafkaTopicSpec:
    """One Kafka topic and the event types it carries (with the settings they share)."""

    name: str
    event_types: tuple[str, ...]
    owners: tuple[str, ...]
    consumers: tuple[str, ...]
    partitions: int
    replication_factor: int
    retention_ms: int


_STR_FIELDS = ("message", "owner", "key")
_INT_FIELDS = ("partitions", "replication_factor", "retention_ms")
_SETTINGS = frozenset(field.name for field in fields(TopicSpec)) - {"name", "topic"}


def _topic_spec(name: str, table: dict[str, Any], path: Path) -> TopicSpec:
    where = f"{path}: topic {name!r}"
    unknown = table.keys() - _SETTINGS - {"topic"}
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {sorted(unknown)}")
    topic = table.get("topic", name)
    if not isinstance(topic, str) or not topic:
        raise ValueError(f"{where}: topic must be a non-empty string")
    missing = _SETTINGS - table.keys()
    if missing:
        raise ValueError(f"{where}: missing setting(s) {sorted(missing)}")
    for key in _STR_FIELDS:
        if not isinstance(table[key], str) or not table[key]:
            raise ValueError(f"{where}: {key} must be a non-empty string")
    for key in _INT_FIELDS:
        if not isinstance(table[key], int) or isinstance(table[key], bool):
            raise ValueError(f"{where}: {key} must be an integer")
    consumers = table["consumers"]
    if not isinstance(consumers, list) or not all(isinstance(c, str) and c for c in consumers):
        raise ValueError(f"{where}: consumers must be a list of service names")
    return TopicSpec(
        name=name,
        message=table["message"],
        owner=table["owner"],
        consumers=tuple(consumers),
        partitions=table["partitions"],
        replication_factor=table["replication_factor"],
        retention_ms=table["retention_ms"],
        key=table["key"],
        topic=topic,
    )


@dataclass(frozen=True)
class InternalTopicSpec:
    """A topic that carries no event type of its own (the dead-letter topic): Kafka messages
    that are copies of other topics' messages, with headers saying where they come from."""

    name: str
    owner: str
    purpose: str
    partitions: int
    replication_factor: int
    retention_ms: int


def load_internal_topics(path: Path | None = None) -> dict[str, InternalTopicSpec]:
    """The `[internal.*]` tables of a topic registry, merged over `[defaults]`."""
    path = path or TOPICS_PATH
    with path.open("rb") as file:
        data = tomllib.load(file)
    defaults = data.get("defaults", {})
    specs: dict[str, InternalTopicSpec] = {}
    for name, table in data.get("internal", {}).items():
        merged = {**defaults, **table}
        specs[name] = InternalTopicSpec(
            name=name,
            owner=str(merged["owner"]),
            purpose=str(merged["purpose"]),
            partitions=int(merged["partitions"]),
            replication_factor=int(merged["replication_factor"]),
            retention_ms=int(merged["retention_ms"]),
        )
    return specs


def load_topics(path: Path | None = None) -> dict[str, TopicSpec]:
    """Read a topic registry; each topic's table is merged over `[defaults]`. File order is kept."""
    path = path or TOPICS_PATH
    with path.open("rb") as file:
        data = tomllib.load(file)
    unknown_tables = data.keys() - {"defaults", "topics", "internal", "retired"}
    if unknown_tables:
        raise ValueError(f"{path}: unknown table(s) {sorted(unknown_tables)}")
    defaults = data.get("defaults", {})
    topics = data.get("topics", {})
    if not isinstance(defaults, dict) or not isinstance(topics, dict):
        raise ValueError(f"{path}: [defaults] and [topics.*] must be tables")
    if "topic" in defaults:
        raise ValueError(f"{path}: [defaults] cannot set topic (it would put every type on one)")
    specs: dict[str, TopicSpec] = {}
    for name, table in topics.items():
        if not isinstance(table, dict):
            raise ValueError(f"{path}: topic {name!r} must be a table")
        specs[name] = _topic_spec(name, {**defaults, **table}, path)
    return specs


def kafka_topics(specs: dict[str, TopicSpec]) -> dict[str, KafkaTopicSpec]:
    """The Kafka topics that carry `specs`' event types, in registry order. Types that share a
    topic must agree on its partitions, replication, retention and key."""
    grouped: dict[str, list[TopicSpec]] = {}
    for spec in specs.values():
        grouped.setdefault(spec.topic, []).append(spec)
    out: dict[str, KafkaTopicSpec] = {}
    for name, members in grouped.items():
        if name in specs and specs[name].topic != name:
            raise ValueError(f"topic {name!r} is also an event type carried elsewhere")
        settings = {(m.partitions, m.replication_factor, m.retention_ms, m.key) for m in members}
        if len(settings) != 1:
            raise ValueError(f"the event types on topic {name!r} disagree on its settings")
        first = members[0]
        out[name] = KafkaTopicSpec(
            name=name,
            event_types=tuple(m.name for m in members),
            owners=tuple(dict.fromkeys(m.owner for m in members)),
            consumers=tuple(dict.fromkeys(c for m in members for c in m.consumers)),
            partitions=first.partitions,
            replication_factor=first.replication_factor,
            retention_ms=first.retention_ms,
        )
    return out


def load_retired_topics(
    path: Path | None = None, current: Iterable[str] | None = None
) -> dict[str, str]:
    """The `[retired]` table: a topic of an earlier release -> the topic carrying its types now."""
    path = path or TOPICS_PATH
    with path.open("rb") as file:
        retired = tomllib.load(file).get("retired", {})
    names = set(current) if current is not None else set(kafka_topics(load_topics(path)))
    for old, new in retired.items():
        if old in names or new not in names:
            raise ValueError(f"{path}: retired topic {old!r} -> {new!r}: not an old -> new topic")
    return dict(retired)


TOPICS: dict[str, TopicSpec] = load_topics()
KAFKA_TOPICS: dict[str, KafkaTopicSpec] = kafka_topics(TOPICS)
INTERNAL_TOPICS: dict[str, InternalTopicSpec] = load_internal_topics()
RETIRED_TOPICS: dict[str, str] = load_retired_topics(current=KAFKA_TOPICS)
if KAFKA_TOPICS.keys() & INTERNAL_TOPICS.keys():
    raise ValueError(f"{TOPICS_PATH}: an event type's topic is also an internal topic")


def current_topic(topic: str) -> str:
    """Where a row addressed to `topic` goes now (a retired topic's successor, else itself)."""
    return RETIRED_TOPICS.get(topic, topic)


def topic_of(event_type: str) -> str:
    """The Kafka topic that carries `event_type` (KeyError for a type the registry lacks)."""
    spec = TOPICS.get(event_type)
    if spec is None:
        raise KeyError(f"unknown event type {event_type!r}")
    return spec.topic


@cache
def generated_modules() -> tuple[ModuleType, ...]:
    """Every generated `*_pb2` module of kiln_contracts.v1, imported, sorted by name."""
    package = importlib.import_module(GENERATED_PACKAGE)
    names = sorted(
        info.name for info in pkgutil.iter_modules(package.__path__) if info.name.endswith("_pb2")
    )
    return tuple(importlib.import_module(f"{GENERATED_PACKAGE}.{name}") for name in names)


@cache
def _message_classes() -> dict[str, type[Message]]:
    classes: dict[str, type[Message]] = {}
    for module in generated_modules():
        for name in module.DESCRIPTOR.message_types_by_name:
            cls = getattr(module, name)
            if not (isinstance(cls, type) and issubclass(cls, Message)):
                raise TypeError(f"{module.__name__}.{name} is not a generated message class")
            classes[name] = cls
    return classes


def message_class(event_type: str) -> type[Message]:
    """The generated class of the payload that events of `event_type` carry.

    Raises KeyError if the type is not in the registry, or if the registry names a message
    that the generated code does not have.
    """
    spec = TOPICS.get(event_type)
    if spec is None:
        raise KeyError(f"unknown event type {event_type!r}")
    cls = _message_classes().get(spec.message)
    if cls is None:
        raise KeyError(
            f"topics.toml maps {event_type!r} to message {spec.message!r}, "
            f"which is not in {GENERATED_PACKAGE}"
        )
    return cls


def example_path(event_type: str) -> Path:
    """Where the example event of `event_type` is (`examples/<type>.json`, in to_json form)."""
    return EXAMPLES_DIR / f"{event_type}.json"
