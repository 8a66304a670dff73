"""The gateway's decisions, as pure functions: ids and secrets, input validation, and how the
job read model moves with each pipeline event."""

import base64
import hashlib
import secrets
import uuid
from typing import Any

from jsonschema import Draft202012Validator

STATUS_RANK = {
    "pending": 0,
    "queued": 1,
    "running": 2,
    "canceling": 3,
    "completed": 9,
    "failed": 9,
    "canceled": 9,
}
TERMINAL = frozenset({"completed", "failed", "canceled"})

# The status each pipeline event moves a job to (None: no status change).
EVENT_STATUS: dict[str, str | None] = {
    "credits.reserved": "queued",
    "credits.rejected": "failed",
    "job.queued": "queued",
    "job.dispatched": "queued",
    "job.started": "running",
    "job.progress": None,
    "job.completed": "completed",
    "job.failed": "failed",
    "job.canceled": "canceled",
}


def next_status(current: str, event_type: str) -> str | None:
    """The job's new status after `event_type`, or None to leave it. Events may arrive late
    or twice: a job never moves backwards and never leaves a final state."""
    target = EVENT_STATUS.get(event_type)
    if target is None or current in TERMINAL:
        return None
    if STATUS_RANK[target] <= STATUS_RANK[current] and target not in TERMINAL:
        return None
    return target


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def new_api_secret(sandbox: bool) -> str:
    return ("sk_test_" if sandbox else "sk_live_") + secrets.token_urlsafe(32)


def secret_sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_webhook_secret() -> str:
    # Standard Webhooks secrets are standard base64 after the prefix (not URL-safe base64).
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def input_errors(schema: dict[str, Any], value: Any) -> list[dict[str, str]]:
    """Every way `value` breaks `schema`, each naming its field as `input.<path>`."""
    validator = Draft202012Validator(schema)
    details = []
    for error in sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path)):
        path = ".".join(str(p) for p in error.absolute_path)
        if error.validator == "additionalProperties" and not path:
            extra = sorted(set(value) - set(schema.get("properties", {})))
            for name in extra:
                details.append({"field": f"input.{name}", "message": "unknown field"})
            continue
        if error.validator == "required":
            missing = error.message.split("'")[1] if "'" in error.message else ""
            details.append({"field": f"input.{missing}".rstrip("."), "message": "is required"})
            continue
        details.append({"field": f"input.{path}" if path else "input", "message": error.message})
    return details


def url_inputs(schema: dict[str, Any], value: Any) -> list[tuple[str, str]]:
    """The top-level string inputs that the model's schema marks as URLs (`format: uri`)."""
    if not isinstance(value, dict):
        return []
    properties = schema.get("properties", {})
    return [
        (name, item)
        for name, item in value.items()
        if isinstance(item, str) and properties.get(name, {}).get("format") == "uri"
    ]
