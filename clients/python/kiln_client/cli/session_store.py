"""The account session of `kiln login`, kept for `kiln keys …` in a file only its owner can
read: `$KILN_CONFIG_DIR/session.json` (default `~/.config/kiln/`)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def config_dir() -> Path:
    configured = os.environ.get("KILN_CONFIG_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "kiln"


def session_file() -> Path:
    return config_dir() / "session.json"


def save_session(base_url: str, email: str, token: str, expires_at: datetime | None) -> Path:
    path = session_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    record = {
        "base_url": base_url,
        "email": email,
        "token": token,
        "expires_at": expires_at.isoformat() if expires_at else None,
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(record, out)
    return path


def load_session(base_url: str) -> str | None:
    """The saved token for ``base_url``, when there is one that has not expired."""
    try:
        record: dict[str, Any] = json.loads(session_file().read_text())
    except (OSError, ValueError):
        return None
    if record.get("base_url") != base_url or not isinstance(record.get("token"), str):
        return None
    expires = record.get("expires_at")
    if isinstance(expires, str):
        try:
            if datetime.fromisoformat(expires.replace("Z", "+00:00")) <= datetime.now(UTC):
                return None
        except ValueError:
            return None
    return str(record["token"])


def forget_session() -> bool:
    try:
        session_file().unlink()
    except FileNotFoundError:
        return False
    return True
