"""Events on the wire: one `Envelope` per Kafka message, its payload the message named by its type.

Producers build envelopes with `new_event` and write `encode(envelope)`; consumers call
`decode(raw)` and get an `Event` (the envelope and its parsed payload) or an `EventDecodeError`
for input that can never be processed (send it to the dead-letter topic, do not retry it).
`to_json` / `from_json` give the readable form that the example files use.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp

from kiln_contracts.registry import TOPICS, message_class
from kiln_contracts.v1.envelope_pb2 import Envelope

SCHEMA_VERSION: Final = 1


class EventDecodeError(ValueError):
    """Input that is not a valid Kiln event: bad bytes, an unknown type, an unparseable payload."""


@dataclass(frozen=True)
class Event:
    """A decoded event: the envelope and its payload parsed into the registry's message class."""

    envelope: Envelope
    message: Message

    @property
    def type(self) -> str:
        return self.envelope.type

    @property
    def event_id(self) -> str:
        return self.envelope.event_id

    @property
    def account_id(self) -> str:
        return self.envelope.account_id

    @property
    def job_id(self) -> str:
        return self.envelope.job_id


def _payload_class(event_type: str) -> type[Message]:
    """The registry's class for `event_type`, or EventDecodeError."""
    try:
        return message_class(event_type)
    except KeyError as exc:
        raise EventDecodeError(f"unknown event type {event_type!r}") from exc


def _payload(envelope: Envelope) -> Message:
    message = _payload_class(envelope.type)()
    try:
        message.ParseFromString(envelope.payload)
    except DecodeError as exc:
        raise EventDecodeError(
            f"payload of {envelope.type} event {envelope.event_id!r} is not a "
            f"{message.DESCRIPTOR.full_name}: {exc}"
        ) from exc
    return message


def new_event(
    event_type: str,
    message: Message,
    *,
    account_id: str,
    job_id: str = "",
    trace_id: str = "",
    event_id: str | None = None,
    occurred_at: datetime | None = None,
) -> Envelope:
    """Wrap `message` in a new envelope of `event_type` (a fresh UUID, now, schema version 1).

    Raises ValueError if the type is not in the registry, if `message` is not the type's
    message class, if `account_id` (every topic's key) is empty, or if `occurred_at` is naive.
    """
    if event_type not in TOPICS:
        raise ValueError(f"unknown event type {event_type!r}")
    expected = message_class(event_type)
    if type(message) is not expected:
        raise ValueError(
            f"{event_type} events carry {expected.DESCRIPTOR.full_name}, "
            f"not {message.DESCRIPTOR.full_name}"
        )
    if not account_id:
        raise ValueError("account_id is required: it is the Kafka key of every topic")
    if event_id is not None and not event_id:
        raise ValueError("event_id must not be empty (leave it out to get a new UUID)")
    if occurred_at is None:
        occurred_at = datetime.now(UTC)
    elif occurred_at.utcoffset() is None:
        raise ValueError("occurred_at must be timezone-aware")
    envelope = Envelope(
        event_id=event_id if event_id is not None else str(uuid.uuid4()),
        type=event_type,
        schema_version=SCHEMA_VERSION,
        account_id=account_id,
        job_id=job_id,
        trace_id=trace_id,
        payload=message.SerializeToString(deterministic=True),
    )
    envelope.occurred_at.FromDatetime(occurred_at)
    return envelope


def encode(envelope: Envelope) -> bytes:
    """The envelope's wire bytes (deterministic serialization)."""
    return envelope.SerializeToString(deterministic=True)


def decode(raw: bytes) -> Event:
    """Parse an envelope and its payload. Raises EventDecodeError for anything not processable."""
    return event_of(decode_envelope(raw))


def decode_envelope(raw: bytes) -> Envelope:
    """Parse the envelope alone (its payload stays bytes): enough to see the event's type, and
    cheaper than `decode` for an event the reader will skip. Raises EventDecodeError."""
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise EventDecodeError(f"expected bytes, got {type(raw).__name__}")
    envelope = Envelope()
    try:
        envelope.ParseFromString(raw)
    except DecodeError as exc:
        raise EventDecodeError(f"not a Kiln envelope: {exc}") from exc
    if not envelope.event_id:
        raise EventDecodeError(f"{envelope.type or 'untyped'} envelope without event_id")
    if not envelope.account_id:
        raise EventDecodeError(f"{envelope.type or 'untyped'} envelope without account_id")
    return envelope


def event_of(envelope: Envelope) -> Event:
    """The event of an envelope from `decode_envelope`: its payload parsed. Raises
    EventDecodeError for an unknown type or a payload that is not the type's message."""
    return Event(envelope=envelope, message=_payload(envelope))


def to_json(envelope: Envelope) -> dict[str, Any]:
    """The envelope as protobuf JSON (proto field names), its payload as the message's JSON."""
    message = _payload(envelope)
    data = json_format.MessageToDict(envelope, preserving_proto_field_name=True)
    data["payload"] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return data


def from_json(data: Mapping[str, Any]) -> Envelope:
    """The inverse of `to_json`. Raises EventDecodeError for JSON that is not such an event."""
    if not isinstance(data, Mapping):
        raise EventDecodeError(f"expected a JSON object, got {type(data).__name__}")
    fields = dict(data)
    if "payload" not in fields:
        raise EventDecodeError("missing 'payload'")
    payload = fields.pop("payload")
    if not isinstance(payload, Mapping):
        raise EventDecodeError("'payload' must be a JSON object")
    envelope = Envelope()
    try:
        json_format.ParseDict(fields, envelope)
        message = json_format.ParseDict(dict(payload), _payload_class(envelope.type)())
    except json_format.ParseError as exc:
        raise EventDecodeError(f"not a Kiln event: {exc}") from exc
    envelope.payload = message.SerializeToString(deterministic=True)
    return envelope


def timestamp(value: datetime | None = None) -> Timestamp:
    """A protobuf Timestamp for `value` (aware), or for now (UTC) when none is given."""
    ts = Timestamp()
    ts.FromDatetime(value if value is not None else datetime.now(UTC))
    return ts
