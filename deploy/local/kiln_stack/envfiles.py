"""`KEY=value` files: secrets.env, demo.env."""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path


def read_env_file(path: Path) -> dict[str, str]:
    """`KEY=value` lines (comments and blank lines skipped, shell quoting undone)."""
    values: dict[str, str] = {}
    if not path.exists():
        return values
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, raw = line.partition("=")
        key = key.strip().removeprefix("export ").strip()
        try:
            parts = shlex.split(raw)
        except ValueError:
            parts = [raw]
        values[key] = parts[0] if parts else ""
    return values


def write_env_file(path: Path, values: Mapping[str, str], header: Sequence[str] = ()) -> bool:
    """Write `KEY=value` lines, readable only by the owner; returns False when unchanged."""
    lines = [f"# {h}" if h else "#" for h in header]
    lines += [f"{key}={shlex.quote(value) if value else ''}" for key, value in values.items()]
    text = "\n".join(lines) + "\n"
    if path.exists() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    os.replace(tmp, path)
    return True
