"""A job's `metadata`: the client's own bookkeeping, stored and returned as given, so bounded
(depth, entries, key and string lengths, total size), and described that way in the OpenAPI
document."""

import json
from typing import Annotated, Any

from pydantic import AfterValidator, WithJsonSchema

METADATA_MAX_DEPTH = 3  # the metadata object itself is level 1
METADATA_MAX_ENTRIES = 50  # per object or array
METADATA_MAX_KEY_LENGTH = 64
METADATA_MAX_STRING_LENGTH = 1000
METADATA_MAX_BYTES = 16 * 1024  # as compact JSON


def check_metadata(value: dict[str, Any]) -> dict[str, Any]:
    """`metadata` within its bounds (see the constants above), else ValueError naming where."""
    stack: list[tuple[str, int, Any]] = [("metadata", 1, value)]
    while stack:
        where, depth, item = stack.pop()
        if isinstance(item, str) and len(item) > METADATA_MAX_STRING_LENGTH:
            raise ValueError(f"{where}: longer than {METADATA_MAX_STRING_LENGTH} characters")
        if not isinstance(item, dict | list):
            continue
        if depth > METADATA_MAX_DEPTH:
            raise ValueError(f"{where}: nested deeper than {METADATA_MAX_DEPTH} levels")
        if len(item) > METADATA_MAX_ENTRIES:
            raise ValueError(f"{where}: more than {METADATA_MAX_ENTRIES} entries")
        if isinstance(item, dict):
            for key, child in item.items():
                if len(key) > METADATA_MAX_KEY_LENGTH:
                    raise ValueError(
                        f"{where}: key {key[:20]!r}… longer than {METADATA_MAX_KEY_LENGTH}"
                    )
                stack.append((f"{where}.{key}", depth + 1, child))
        else:
            stack.extend((f"{where}.{i}", depth + 1, child) for i, child in enumerate(item))
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    if size > METADATA_MAX_BYTES:
        raise ValueError(f"metadata: larger than {METADATA_MAX_BYTES} bytes as JSON")
    return value


_SCALARS: list[dict[str, Any]] = [
    {"type": "string", "maxLength": METADATA_MAX_STRING_LENGTH},
    {"type": "number"},
    {"type": "boolean"},
    {"type": "null"},
]


def _metadata_object_schema(level: int) -> dict[str, Any]:
    return {
        "type": "object",
        "maxProperties": METADATA_MAX_ENTRIES,
        "propertyNames": {"maxLength": METADATA_MAX_KEY_LENGTH},
        "additionalProperties": _metadata_value_schema(level + 1),
    }


def _metadata_value_schema(level: int) -> dict[str, Any]:
    """A value `level` deep, spelt out level by level (JSON Schema cannot count depth)."""
    if level > METADATA_MAX_DEPTH:
        return {"anyOf": list(_SCALARS)}
    array = {
        "type": "array",
        "maxItems": METADATA_MAX_ENTRIES,
        "items": _metadata_value_schema(level + 1),
    }
    return {"anyOf": [*_SCALARS, array, _metadata_object_schema(level)]}


METADATA_DESCRIPTION = (
    "Your own bookkeeping, stored with the job and returned as given; not read by Kiln and not "
    f"checked by the content policy. At most {METADATA_MAX_DEPTH} levels deep, "
    f"{METADATA_MAX_ENTRIES} entries per object or array, keys of at most "
    f"{METADATA_MAX_KEY_LENGTH} characters, strings of at most {METADATA_MAX_STRING_LENGTH} "
    f"characters, and {METADATA_MAX_BYTES} bytes in all as compact JSON."
)

Metadata = Annotated[
    dict[str, Any],
    AfterValidator(check_metadata),
    WithJsonSchema({**_metadata_object_schema(1), "description": METADATA_DESCRIPTION}),
]
