"""Every topic has a real example that decodes, and every payload message has a topic."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kiln_contracts import TOPICS, decode, encode, from_json, message_class, to_json
from kiln_contracts.registry import EXAMPLES_DIR, example_path
from kiln_contracts.snapshot import current_snapshot

ENVELOPE = "kiln.events.v1.Envelope"


def _example(event_type: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(example_path(event_type).read_text(encoding="utf-8"))
    return data


@pytest.mark.parametrize("event_type", sorted(TOPICS))
def test_example_round_trips(event_type: str) -> None:
    example = _example(event_type)
    envelope = from_json(example)
    event = decode(encode(envelope))

    assert event.type == event_type
    assert event.envelope == envelope
    assert type(event.message) is message_class(event_type)
    assert event.message.SerializeToString(deterministic=True) == envelope.payload
    assert to_json(event.envelope) == example, "the example is not in canonical to_json form"


@pytest.mark.parametrize("event_type", sorted(TOPICS))
def test_example_is_realistic(event_type: str) -> None:
    event = decode(encode(from_json(_example(event_type))))
    assert event.envelope.schema_version == 1
    assert event.account_id.startswith("acct_")
    assert event.envelope.HasField("occurred_at")
    assert event.message.ByteSize() > 0, "an example should show some fields"
    if event_type.startswith("job."):
        assert event.job_id, "job events are about one job"


def test_no_example_without_a_topic() -> None:
    names = {path.name.removesuffix(".json") for path in EXAMPLES_DIR.glob("*.json")}
    assert names == set(TOPICS)


def test_every_registered_message_exists() -> None:
    for event_type in TOPICS:
        assert message_class(event_type).__name__ == TOPICS[event_type].message


def test_every_payload_message_has_a_topic() -> None:
    # A payload is a message that no other message uses as a field type (JobSpec, Balance, …
    # are parts of payloads) and that is not the envelope itself.
    snapshot = current_snapshot()
    used_as_field = {field["type_name"] for fields in snapshot.values() for field in fields}
    payloads = {name for name in snapshot if name not in used_as_field and name != ENVELOPE}
    registered = {f"kiln.events.v1.{spec.message}" for spec in TOPICS.values()}
    assert payloads - registered == set(), "messages that no topic in topics.toml carries"
    assert not registered & used_as_field, "a topic carries a message that is also a part"
