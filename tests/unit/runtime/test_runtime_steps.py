"""The event runtime's pure steps: decoding and marking deliveries, telling transient failures
from the event's own, dead-letter headers, stable ids of derived events."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

from sqlalchemy import exc as sa_exc

from kiln_contracts import decode, encode, new_event
from kiln_contracts.v1 import credits_pb2, jobs_pb2
from kiln_runtime.batches import Delivery, decode_deliveries
from kiln_runtime.dead_letters import (
    H_REPLAY_FOR,
    _entry,
    dead_letter_headers,
    dead_letter_id,
    replay_target,
)
from kiln_runtime.failures import (
    PoisonEvent,
    TransientError,
    describe,
    is_transient,
    may_be_one_writes,
)
from kiln_runtime.unit import OutgoingEvent, Unit, headers_from_blob


def _grant_bytes(account: str = "acct_a") -> bytes:
    return encode(
        new_event("credits.granted", credits_pb2.CreditsGranted(grant_id="g"), account_id=account)
    )


def test_deliveries_decode_or_say_why_not() -> None:
    good = Delivery("credits.granted", 0, 5, b"acct_a", _grant_bytes())
    bad = Delivery("credits.granted", 0, 6, b"acct_a", b"\x00junk")
    empty = Delivery("credits.granted", 0, 7, b"acct_a", None)
    other = Delivery(
        "credits.applied",
        0,
        8,
        b"acct_a",
        encode(
            new_event("credits.applied", credits_pb2.CreditsApplied(grant_id="g"), account_id="a")
        ),
    )
    replay = Delivery(
        "credits.granted", 0, 9, b"acct_a", _grant_bytes(), headers=((H_REPLAY_FOR, b"scheduler"),)
    )
    mine = Delivery(
        "credits.granted", 0, 10, b"acct_a", _grant_bytes(), headers=((H_REPLAY_FOR, b"billing"),)
    )
    out = decode_deliveries(
        [good, bad, empty, other, replay, mine], group="billing", event_types=["credits.granted"]
    )
    assert out[0].event is not None and out[0].error is None and out[0].skip is None
    assert out[1].event is None and out[1].error and out[1].error.startswith("EventDecodeError")
    assert out[2].error == "EventDecodeError: empty message"
    assert out[3].skip == "ignored"
    assert out[4].skip == "replay_for_other_group" and out[4].event is None
    assert out[5].skip is None and out[5].event is not None


def test_a_type_this_group_does_not_take_is_skipped_unparsed_even_if_unknown() -> None:
    """A shared topic carries types a group does not take, a later release's among them
    during its rollout: skipped by the envelope's type, never parsed or dead-lettered."""
    canceled = new_event("job.canceled", jobs_pb2.JobCanceled(), account_id="acct_a")
    later = new_event("job.canceled", jobs_pb2.JobCanceled(), account_id="acct_a")
    later.type, later.payload = "job.abandoned", b"\x0a\x7f\x01"
    taken = new_event("job.failed", jobs_pb2.JobFailed(attempt=2), account_id="acct_a")
    out = decode_deliveries(
        [
            Delivery("job.ended", 0, n, b"acct_a", encode(e))
            for n, e in enumerate([canceled, later, taken])
        ],
        group="scheduler",
        event_types=["job.completed", "job.failed"],
    )
    assert [(d.skip, d.error, d.event_type) for d in out[:2]] == [
        ("ignored", None, "job.canceled"),
        ("ignored", None, "job.abandoned"),
    ]
    assert out[0].event is None and out[1].event is None
    assert out[2].skip is None and out[2].event is not None
    assert out[2].event.message == jobs_pb2.JobFailed(attempt=2)


def test_an_emitted_end_goes_to_job_ended_and_is_counted_by_its_type() -> None:
    unit = Unit(connection=None, now=datetime(2026, 1, 1, tzinfo=UTC), service="s")  # type: ignore[arg-type]
    unit.emit("job.canceled", jobs_pb2.JobCanceled(), account_id="acct_a", job_id="job_1")
    [row] = unit.outgoing
    assert (row.topic, row.event_type, row.label) == ("job.ended", "job.canceled", "job.canceled")
    assert OutgoingEvent("kiln.dead_letters", "k", "e", b"").label == "kiln.dead_letters"


def test_transient_failures_are_the_database_or_the_broker_not_the_event() -> None:
    locked = sa_exc.OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked"))
    assert is_transient(locked)
    assert is_transient(TransientError("away"))
    assert is_transient(ConnectionRefusedError())
    assert is_transient(TimeoutError())
    integrity = sa_exc.IntegrityError("INSERT", {}, sqlite3.IntegrityError("UNIQUE failed"))
    assert not is_transient(integrity)
    assert not is_transient(ValueError("bad input"))
    assert not is_transient(KeyError("x"))
    assert not is_transient(PoisonEvent("never"))
    assert describe(ValueError("x" * 5000)).startswith("ValueError: x")
    assert len(describe(ValueError("x" * 5000))) <= 1000


class _PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        self.sqlstate = sqlstate


def test_only_a_failure_that_can_be_one_writes_sends_a_group_apart() -> None:
    def pg(sqlstate: str) -> sa_exc.DBAPIError:
        return sa_exc.OperationalError("UPDATE", {}, _PgError(sqlstate))

    for one_write in ("55P03", "40P01", "40001", "57014"):  # lock, deadlock, serialization
        assert is_transient(pg(one_write)) and may_be_one_writes(pg(one_write)), one_write
    assert may_be_one_writes(TransientError("changed elsewhere"))
    for whole in ("08006", "57P01", "53300"):  # connection lost, shutdown, too many clients
        assert is_transient(pg(whole)) and not may_be_one_writes(pg(whole)), whole
    locked = sa_exc.OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked"))
    assert not may_be_one_writes(locked)
    assert not may_be_one_writes(ConnectionRefusedError())


def test_a_dead_letter_names_where_it_came_from() -> None:
    at = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)
    value = _grant_bytes()
    event = decode(value)
    headers = dead_letter_headers(
        group="billing",
        topic="credits.granted",
        partition=3,
        offset=41,
        error="ValueError: no",
        at=at,
        event_id=event.event_id,
        event_type=event.type,
    )
    entry = _entry(2, 7, b"acct_a", value, list(headers.items()))
    assert (entry.group, entry.topic, entry.partition, entry.offset) == (
        "billing",
        "credits.granted",
        3,
        41,
    )
    assert entry.error == "ValueError: no" and entry.at == at.isoformat()
    assert entry.event_id == event.event_id and entry.event_type == "credits.granted"
    assert entry.ref == "2:7" and entry.key == "acct_a"
    assert dead_letter_id("billing", "credits.granted", 3, 41) == "dlq:billing:credits.granted:3:41"
    assert replay_target([(H_REPLAY_FOR, b"billing")]) == "billing"
    assert replay_target([]) is None
    # Headers survive the outbox row.
    row = OutgoingEvent("kiln.dead_letters", "acct_a", "x", value, tuple(headers.items()))
    assert headers_from_blob(row.header_blob()) == list(headers.items())


def test_events_derived_from_an_event_have_stable_ids() -> None:
    cause = decode(_grant_bytes())
    now = datetime(2026, 12, 5, tzinfo=UTC)

    def emitted() -> list[str]:
        unit = Unit(connection=None, now=now, service="billing", cause=cause)  # type: ignore[arg-type]
        first = unit.emit(
            "credits.applied", credits_pb2.CreditsApplied(grant_id="g"), account_id="acct_a"
        )
        second = unit.emit(
            "credits.applied", credits_pb2.CreditsApplied(grant_id="g"), account_id="acct_a"
        )
        return [first.event_id, second.event_id]

    ids = emitted()
    assert ids == emitted(), "the same cause handled again emits the same ids"
    assert ids[0] != ids[1], "two events of one cause differ"
    assert (
        Unit(connection=None, now=now, service="b")
        .emit(  # type: ignore[arg-type]
            "credits.applied", credits_pb2.CreditsApplied(grant_id="g"), account_id="a"
        )
        .event_id
        not in ids
    )
