"""Field numbers are never removed, reused or renumbered: the committed snapshot still holds."""

from __future__ import annotations

import copy

from kiln_contracts.snapshot import (
    SNAPSHOT_PATH,
    FieldRecord,
    Snapshot,
    compatibility_problems,
    current_snapshot,
    dump_snapshot,
    load_snapshot,
)

ENVELOPE = "kiln.events.v1.Envelope"
JOB_SPEC = "kiln.events.v1.JobSpec"


def _field(snapshot: Snapshot, message: str, name: str) -> FieldRecord:
    return next(f for f in snapshot[message] if f["name"] == name)


def test_committed_snapshot_holds() -> None:
    problems = compatibility_problems(load_snapshot(), current_snapshot())
    assert problems == [], (
        "the .proto files break the committed descriptor snapshot:\n" + "\n".join(problems)
    )


def test_committed_snapshot_is_canonical() -> None:
    text = SNAPSHOT_PATH.read_text(encoding="utf-8")
    assert dump_snapshot(load_snapshot()) == text


def test_snapshot_covers_the_envelope() -> None:
    fields = {f["name"]: f["number"] for f in load_snapshot()[ENVELOPE]}
    assert fields["event_id"] == 1
    assert fields["payload"] == 8


def test_check_catches_a_renumber() -> None:
    current = current_snapshot()
    doctored = copy.deepcopy(current)
    _field(doctored, ENVELOPE, "payload")["number"] = 9  # the committed file said 9, now it is 8
    problems = compatibility_problems(doctored, current)
    assert problems == [f"{ENVELOPE}.payload (field 9) was renumbered to 8"]


def test_check_catches_a_removal_and_a_reuse() -> None:
    current = current_snapshot()
    doctored = copy.deepcopy(current)
    doctored[ENVELOPE].append(
        {
            "name": "partition_hint",
            "number": 99,
            "type": "string",
            "type_name": "",
            "label": "optional",
            "proto3_optional": False,
        }
    )
    _field(doctored, ENVELOPE, "trace_id")["name"] = "span_id"  # as if trace_id took span_id's 7
    problems = compatibility_problems(doctored, current)
    assert f"{ENVELOPE}.partition_hint (field 99) was removed" in problems
    assert f"{ENVELOPE}.span_id (field 7) was removed and its number reused by trace_id" in problems


def test_check_catches_type_and_cardinality_changes() -> None:
    current = current_snapshot()
    doctored = copy.deepcopy(current)
    _field(doctored, JOB_SPEC, "pool")["type"] = "bytes"
    _field(doctored, JOB_SPEC, "model")["label"] = "repeated"
    _field(doctored, JOB_SPEC, "sandbox_outcome")["proto3_optional"] = False
    _field(doctored, JOB_SPEC, "result_key")["type_name"] = "kiln.events.v1.OtherKey"
    problems = compatibility_problems(doctored, current)
    assert len(problems) == 4, problems


def test_check_catches_a_removed_message() -> None:
    current = current_snapshot()
    doctored = copy.deepcopy(current)
    doctored["kiln.events.v1.JobRetired"] = []
    assert compatibility_problems(doctored, current) == [
        "message kiln.events.v1.JobRetired was removed"
    ]


def test_new_fields_and_messages_are_allowed() -> None:
    current = current_snapshot()
    older = copy.deepcopy(current)
    older[ENVELOPE] = [f for f in older[ENVELOPE] if f["name"] != "trace_id"]
    del older[JOB_SPEC]
    assert compatibility_problems(older, current) == []
