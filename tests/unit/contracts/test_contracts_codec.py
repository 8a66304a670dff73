"""The envelope codec: what producers write and consumers can (or cannot) read."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from kiln_contracts import (
    Event,
    EventDecodeError,
    decode,
    decode_envelope,
    encode,
    event_of,
    from_json,
    new_event,
    to_json,
)
from kiln_contracts.v1.common_pb2 import Balance, JobSpec
from kiln_contracts.v1.credits_pb2 import CreditsCaptured
from kiln_contracts.v1.envelope_pb2 import Envelope
from kiln_contracts.v1.jobs_pb2 import JobQueued, JobSubmitted

ACCOUNT = "acct_test"
JOB = "6f1c2b9e-0d4a-4e7f-9b3c-2a8d5e1f7c04"


def _submitted() -> JobSubmitted:
    return JobSubmitted(spec=JobSpec(model="kiln/text-to-speech", pool="cpu-speech"))


def test_new_event_fills_the_envelope() -> None:
    before = datetime.now(UTC)
    envelope = new_event(
        "job.submitted", _submitted(), account_id=ACCOUNT, job_id=JOB, trace_id="t1"
    )
    assert uuid.UUID(envelope.event_id).version == 4
    assert envelope.type == "job.submitted"
    assert envelope.schema_version == 1
    assert envelope.account_id == ACCOUNT
    assert envelope.job_id == JOB
    assert envelope.trace_id == "t1"
    occurred = envelope.occurred_at.ToDatetime(tzinfo=UTC)
    assert before - timedelta(seconds=1) <= occurred <= datetime.now(UTC)
    assert envelope.payload == _submitted().SerializeToString(deterministic=True)


def test_new_event_keeps_given_id_and_time() -> None:
    when = datetime(2025, 6, 12, 11, 0, tzinfo=timezone(timedelta(hours=2)))
    envelope = new_event(
        "job.queued",
        JobQueued(queue_position=1),
        account_id=ACCOUNT,
        event_id="e-1",
        occurred_at=when,
    )
    assert envelope.event_id == "e-1"
    assert envelope.occurred_at.ToDatetime(tzinfo=UTC) == datetime(2025, 6, 12, 9, 0, tzinfo=UTC)


def test_encode_decode_round_trip() -> None:
    message = CreditsCaptured(
        amount_millicredits=5000,
        balance=Balance(available_millicredits=45000, reserved_millicredits=0),
    )
    envelope = new_event("credits.captured", message, account_id=ACCOUNT, job_id=JOB)
    event = decode(encode(envelope))
    assert event == Event(envelope=envelope, message=message)
    assert (event.type, event.event_id, event.account_id, event.job_id) == (
        "credits.captured",
        envelope.event_id,
        ACCOUNT,
        JOB,
    )
    assert isinstance(event.message, CreditsCaptured)
    assert event.message.amount_millicredits == 5000


def test_encode_is_deterministic() -> None:
    envelope = new_event("job.submitted", _submitted(), account_id=ACCOUNT)
    assert encode(envelope) == encode(Envelope.FromString(encode(envelope)))


def test_json_round_trip() -> None:
    envelope = new_event(
        "credits.captured", CreditsCaptured(amount_millicredits=5000), account_id=ACCOUNT
    )
    data = to_json(envelope)
    assert data["payload"] == {"amount_millicredits": "5000"}
    assert from_json(data) == envelope


def test_decode_error_is_a_value_error() -> None:
    assert issubclass(EventDecodeError, ValueError)


@pytest.mark.parametrize(
    "raw",
    [
        b"garbage",
        b"\xff\xff\xff\xff",
        b"\x0a\x05ab",  # a string field that claims 5 bytes and has 2
        b"",  # parses as an empty envelope: no id, no type
        bytes(range(256)),
    ],
)
def test_garbage_bytes_are_refused(raw: bytes) -> None:
    with pytest.raises(EventDecodeError):
        decode(raw)


def test_kafka_tombstone_is_refused() -> None:
    with pytest.raises(EventDecodeError):
        decode(None)  # type: ignore[arg-type]


def test_unknown_type_is_refused() -> None:
    envelope = new_event("job.submitted", _submitted(), account_id=ACCOUNT)
    envelope.type = "job.exploded"
    with pytest.raises(EventDecodeError, match=r"job\.exploded"):
        decode(encode(envelope))


def test_unparseable_payload_is_refused() -> None:
    envelope = new_event("job.submitted", _submitted(), account_id=ACCOUNT)
    envelope.payload = b"\x0a\x7f\x01"  # spec claims 127 bytes
    with pytest.raises(EventDecodeError, match="payload"):
        decode(encode(envelope))


def test_envelope_without_account_is_refused() -> None:
    envelope = new_event("job.submitted", _submitted(), account_id=ACCOUNT)
    envelope.account_id = ""
    with pytest.raises(EventDecodeError, match="account_id"):
        decode(encode(envelope))


def test_new_event_refuses_the_wrong_message_class() -> None:
    with pytest.raises(ValueError, match="JobSubmitted"):
        new_event("job.submitted", JobQueued(queue_position=1), account_id=ACCOUNT)


def test_new_event_refuses_an_unknown_type() -> None:
    with pytest.raises(ValueError, match="unknown event type"):
        new_event("job.exploded", _submitted(), account_id=ACCOUNT)


def test_new_event_refuses_missing_account_and_naive_time() -> None:
    with pytest.raises(ValueError, match="account_id"):
        new_event("job.submitted", _submitted(), account_id="")
    with pytest.raises(ValueError, match="timezone"):
        new_event(
            "job.submitted", _submitted(), account_id=ACCOUNT, occurred_at=datetime(2025, 1, 1)
        )
    with pytest.raises(ValueError, match="event_id"):
        new_event("job.submitted", _submitted(), account_id=ACCOUNT, event_id="")


@pytest.mark.parametrize(
    "data",
    [
        {"type": "job.submitted", "event_id": "e", "account_id": ACCOUNT},  # no payload
        {"type": "job.submitted", "payload": []},
        {"type": "job.exploded", "payload": {}},
        {"type": "job.submitted", "colour": "red", "payload": {}},
        {"type": "job.submitted", "payload": {"spec": {"model": 5}}},
        {"type": "job.queued", "occurred_at": "yesterday", "payload": {}},
    ],
)
def test_bad_json_is_refused(data: dict[str, object]) -> None:
    with pytest.raises(EventDecodeError):
        from_json(data)


def test_the_envelope_alone_is_read_without_its_payload() -> None:
    envelope = new_event("job.submitted", _submitted(), account_id=ACCOUNT)
    envelope.payload = b"\x0a\x7f\x01"  # not a JobSubmitted: only event_of finds out
    envelope.type = "job.exploded"  # nor a type this release knows
    read = decode_envelope(encode(envelope))
    assert (read.type, read.account_id) == ("job.exploded", ACCOUNT)
    with pytest.raises(EventDecodeError, match=r"job\.exploded"):
        event_of(read)
    with pytest.raises(EventDecodeError, match="not a Kiln envelope"):
        decode_envelope(b"\xff\xff")
