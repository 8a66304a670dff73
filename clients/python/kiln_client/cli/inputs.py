"""`-i key=value` job inputs, as httpie spells them: `key=text` is a string, `key:=json` is
any JSON value (`seed:=7`, `loop:=true`, `size:='[512, 512]'`); `@file.json` reads a whole
input object from a file."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class InputError(ValueError):
    pass


def parse_pairs(pairs: Iterable[str], *, what: str = "input") -> dict[str, Any]:
    values: dict[str, Any] = {}
    for pair in pairs:
        if pair.startswith("@"):
            loaded = _load_object(Path(pair[1:]), what)
            values.update(loaded)
            continue
        json_at = pair.find(":=")
        text_at = pair.find("=")
        if json_at != -1 and json_at < text_at:
            key, raw = pair[:json_at], pair[json_at + 2 :]
            try:
                value: Any = json.loads(raw)
            except ValueError:
                raise InputError(f"{what} {key!r}: {raw!r} is not JSON (use {key}=text)") from None
        elif text_at != -1:
            key, value = pair[:text_at], pair[text_at + 1 :]
        else:
            raise InputError(f"{what} {pair!r} is not key=value, key:=json or @file.json")
        if not key:
            raise InputError(f"{what} {pair!r} has no key")
        values[key] = value
    return values


def _load_object(path: Path, what: str) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{what} file {path}: {exc}") from None
    if not isinstance(loaded, dict):
        raise InputError(f"{what} file {path} must hold a JSON object")
    return loaded
