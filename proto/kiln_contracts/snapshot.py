"""The descriptor snapshot: what every message's fields were when the snapshot was committed.

Field numbers are never reused or renumbered (docs/architecture.md, "Event contracts").
`descriptor_snapshot.json` records every message of the contracts as `full name -> [{name, number,
type, type_name, label, proto3_optional}]`; `compatibility_problems` says how the current
descriptors break it. Adding fields or messages is fine; removing, renumbering, retyping or changing
the cardinality of a field is not.

This module imports nothing from the generated code at import time, so that `generate.py` can use it
while the generated modules are missing or stale."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal, TypedDict

from google.protobuf.descriptor_pb2 import (
    DescriptorProto,
    FieldDescriptorProto,
    FileDescriptorProto,
)

SNAPSHOT_PATH = Path(__file__).with_name("descriptor_snapshot.json")
# Only the contracts' own files are held; google/protobuf/*.proto are not ours to freeze.
CONTRACT_FILE_PREFIX = "kiln_contracts/"


class FieldRecord(TypedDict):
    name: str
    number: int
    type: str  # "string", "int64", "message", "enum", ...
    type_name: str  # the message or enum's full name, "" for scalars
    label: str  # "optional" (singular) | "repeated"
    proto3_optional: bool  # declared with `optional` (explicit presence)


Snapshot = dict[str, list[FieldRecord]]


def _field_record(field: FieldDescriptorProto) -> FieldRecord:
    type_name = FieldDescriptorProto.Type.Name(field.type).removeprefix("TYPE_").lower()
    label = FieldDescriptorProto.Label.Name(field.label).removeprefix("LABEL_").lower()
    return FieldRecord(
        name=field.name,
        number=field.number,
        type=type_name,
        type_name=field.type_name.lstrip("."),
        label=label,
        proto3_optional=field.proto3_optional,
    )


def _add_message(snapshot: Snapshot, prefix: str, message: DescriptorProto) -> None:
    full_name = f"{prefix}.{message.name}" if prefix else message.name
    fields = sorted(message.field, key=lambda field: field.number)
    snapshot[full_name] = [_field_record(field) for field in fields]
    for nested in message.nested_type:
        _add_message(snapshot, full_name, nested)


def build_snapshot(files: Iterable[FileDescriptorProto]) -> Snapshot:
    """Every message (nested ones too) of the contract files, keyed and sorted by full name."""
    snapshot: Snapshot = {}
    for file in files:
        if not file.name.startswith(CONTRACT_FILE_PREFIX):
            continue
        for message in file.message_type:
            _add_message(snapshot, file.package, message)
    return dict(sorted(snapshot.items()))


def dump_snapshot(snapshot: Snapshot) -> str:
    """Stable JSON text: sorted messages, fields by number, fixed key order, final newline."""
    return json.dumps(snapshot, indent=2) + "\n"


def load_snapshot(path: Path = SNAPSHOT_PATH) -> Snapshot:
    data: Snapshot = json.loads(path.read_text(encoding="utf-8"))
    return data


def current_snapshot() -> Snapshot:
    """The snapshot of the generated modules that services import right now."""
    # Imported here, not at the top: see the module doc.
    from kiln_contracts.registry import generated_modules

    files: list[FileDescriptorProto] = []
    for module in generated_modules():
        file = FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(file)
        files.append(file)
    return build_snapshot(files)


_ComparedKey = Literal["type", "type_name", "label", "proto3_optional"]
_COMPARED_KEYS: tuple[_ComparedKey, ...] = ("type", "type_name", "label", "proto3_optional")


def compatibility_problems(
    committed: Mapping[str, list[FieldRecord]], current: Snapshot
) -> list[str]:
    """How `current` breaks `committed`, one sentence each; empty when compatible."""
    problems: list[str] = []
    for message_name, committed_fields in sorted(committed.items()):
        if message_name not in current:
            problems.append(f"message {message_name} was removed")
            continue
        current_by_name = {field["name"]: field for field in current[message_name]}
        current_by_number = {field["number"]: field for field in current[message_name]}
        for old in committed_fields:
            where = f"{message_name}.{old['name']} (field {old['number']})"
            new = current_by_name.get(old["name"])
            if new is None:
                reuser = current_by_number.get(old["number"])
                if reuser is None:
                    problems.append(f"{where} was removed")
                else:
                    problems.append(
                        f"{where} was removed and its number reused by {reuser['name']}"
                    )
                continue
            if new["number"] != old["number"]:
                problems.append(f"{where} was renumbered to {new['number']}")
            for key in _COMPARED_KEYS:
                if new[key] != old[key]:
                    problems.append(f"{where} changed {key} from {old[key]!r} to {new[key]!r}")
    return problems
