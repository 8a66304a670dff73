"""The topic registry: co-partitioned, keyed by account, owned and consumed by real services."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kiln_billing.ledger import JOB_ENDS
from kiln_contracts import (
    INTERNAL_TOPICS,
    KAFKA_TOPICS,
    RETIRED_TOPICS,
    TOPICS,
    KafkaTopicSpec,
    TopicSpec,
    current_topic,
    load_topics,
    topic_of,
)
from kiln_contracts.registry import kafka_topics, load_retired_topics
from kiln_contracts.v1.envelope_pb2 import Envelope
from kiln_notifier.tables import TERMINAL_TYPES

SERVICES = {"gateway", "billing", "scheduler", "inference", "notifier"}
TOPIC_NAME = re.compile(r"^[a-z]+(\.[a-z_]+)+$")
_DEFAULTS = """
[defaults]
partitions = 3
replication_factor = 1
retention_ms = 1000
key = "account_id"
"""


def test_topics_is_the_committed_registry() -> None:
    assert load_topics() == TOPICS
    assert len(TOPICS) >= 1


def test_all_topics_are_co_partitioned() -> None:
    assert len({spec.partitions for spec in TOPICS.values()}) == 1
    assert all(spec.partitions >= 1 for spec in TOPICS.values())


def test_all_topics_are_keyed_by_account() -> None:
    assert {spec.key for spec in TOPICS.values()} == {"account_id"}
    assert "account_id" in Envelope.DESCRIPTOR.fields_by_name


@pytest.mark.parametrize("name", sorted(TOPICS))
def test_topic_is_sane(name: str) -> None:
    spec = TOPICS[name]
    assert spec.name == name
    assert TOPIC_NAME.match(name), "topic names are '<domain>.<event>' in lower case"
    assert spec.owner in SERVICES
    assert spec.consumers, "a topic nobody consumes should not exist"
    assert set(spec.consumers) <= SERVICES
    assert len(set(spec.consumers)) == len(spec.consumers)
    assert spec.replication_factor >= 1
    assert spec.retention_ms == -1 or spec.retention_ms > 0


def test_every_service_takes_part() -> None:
    owners = {spec.owner for spec in TOPICS.values()}
    consumers = {c for spec in TOPICS.values() for c in spec.consumers}
    assert owners == SERVICES
    assert consumers == SERVICES


def test_defaults_are_merged(tmp_path: Path) -> None:
    path = tmp_path / "topics.toml"
    path.write_text(
        _DEFAULTS
        + """
[topics."a.one"]
message = "One"
owner = "gateway"
consumers = ["billing"]

[topics."a.two"]
message = "Two"
owner = "billing"
consumers = ["gateway", "notifier"]
retention_ms = -1
""",
        encoding="utf-8",
    )
    topics = load_topics(path)
    assert list(topics) == ["a.one", "a.two"]
    assert topics["a.one"] == TopicSpec(
        name="a.one",
        message="One",
        owner="gateway",
        consumers=("billing",),
        partitions=3,
        replication_factor=1,
        retention_ms=1000,
        key="account_id",
    )
    assert topics["a.two"].retention_ms == -1
    assert topics["a.two"].consumers == ("gateway", "notifier")


@pytest.mark.parametrize(
    ("table", "error"),
    [
        ('message = "One"\nowner = "gateway"\nconsumer = ["billing"]', "unknown setting"),
        ('message = "One"\nowner = "gateway"', "missing setting"),
        ('message = "One"\nowner = "gateway"\nconsumers = "billing"', "consumers"),
        ('message = 1\nowner = "gateway"\nconsumers = []', "message"),
        ('message = "One"\nowner = "gateway"\nconsumers = []\npartitions = "6"', "partitions"),
    ],
)
def test_bad_registry_is_refused(tmp_path: Path, table: str, error: str) -> None:
    path = tmp_path / "topics.toml"
    path.write_text(
        '[defaults]\npartitions = 6\nreplication_factor = 1\nretention_ms = 1\nkey = "account_id"\n'
        f'[topics."a.one"]\n{table}\n',
        encoding="utf-8",
    )
    with pytest.raises(ValueError, match=error):
        load_topics(path)


def test_a_type_travels_on_its_own_topic_unless_the_registry_says() -> None:
    assert topic_of("job.submitted") == "job.submitted"
    assert KAFKA_TOPICS["job.submitted"].event_types == ("job.submitted",)
    with pytest.raises(KeyError):
        topic_of("job.nonexistent")


def test_every_end_of_a_job_travels_on_one_topic() -> None:
    """Inference completes a job and the scheduler fails or cancels it: only one topic puts the
    two deciders' ends in one order that billing, the gateway and the notifier all see."""
    ends = {f"job.{end}" for end in JOB_ENDS} | set(TERMINAL_TYPES)
    assert {topic_of(end) for end in ends} == {"job.ended"}
    assert set(KAFKA_TOPICS["job.ended"].event_types) == ends
    assert set(KAFKA_TOPICS["job.ended"].owners) == {"inference", "scheduler"}


_SHARED = (
    _DEFAULTS
    + """
[topics."a.one"]
topic = "a.both"
message = "One"
owner = "gateway"
consumers = ["billing"]

[topics."a.two"]
topic = "a.both"
message = "Two"
owner = "billing"
consumers = ["gateway", "billing"]
"""
)


def test_types_that_share_a_topic_make_one_kafka_topic(tmp_path: Path) -> None:
    path = tmp_path / "topics.toml"
    path.write_text(_SHARED, encoding="utf-8")
    [both] = kafka_topics(load_topics(path)).values()
    assert both == KafkaTopicSpec(
        name="a.both",
        event_types=("a.one", "a.two"),
        owners=("gateway", "billing"),
        consumers=("billing", "gateway"),
        partitions=3,
        replication_factor=1,
        retention_ms=1000,
    )


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ('consumers = ["gateway", "billing"]\nretention_ms = 5', "disagree"),
        (
            'consumers = ["gateway", "billing"]\n[topics."a.both"]\ntopic = "a.else"\n'
            'message = "X"\nowner = "gateway"\nconsumers = ["billing"]',
            "carried elsewhere",
        ),
    ],
)
def test_a_shared_topic_that_cannot_be_one_topic_is_refused(
    tmp_path: Path, change: str, error: str
) -> None:
    path = tmp_path / "topics.toml"
    path.write_text(_SHARED.replace('consumers = ["gateway", "billing"]', change), encoding="utf-8")
    with pytest.raises(ValueError, match=error):
        kafka_topics(load_topics(path))


def test_a_retired_topic_names_the_topic_that_carries_its_types_now(tmp_path: Path) -> None:
    assert current_topic("job.completed") == "job.ended"
    assert current_topic("job.submitted") == "job.submitted"
    assert set(RETIRED_TOPICS.values()) <= set(KAFKA_TOPICS)
    path = tmp_path / "topics.toml"
    for table in ('[retired]\n"a.both" = "a.one"', '[retired]\n"a.old" = "a.gone"'):
        path.write_text(f"{_SHARED}\n{table}\n", encoding="utf-8")
        with pytest.raises(ValueError, match="retired topic"):
            load_retired_topics(path)
    path.write_text(f'{_SHARED}\n[retired]\n"a.old" = "a.both"\n', encoding="utf-8")
    assert load_retired_topics(path) == {"a.old": "a.both"}


def test_defaults_cannot_put_every_type_on_one_topic(tmp_path: Path) -> None:
    path = tmp_path / "topics.toml"
    path.write_text(_SHARED.replace("[defaults]", '[defaults]\ntopic = "all"'), encoding="utf-8")
    with pytest.raises(ValueError, match="cannot set topic"):
        load_topics(path)


@pytest.mark.parametrize("name", sorted(KAFKA_TOPICS))
def test_kafka_topic_names_are_sane(name: str) -> None:
    assert TOPIC_NAME.match(name), "topic names are '<domain>.<event>' in lower case"
    assert name not in INTERNAL_TOPICS
