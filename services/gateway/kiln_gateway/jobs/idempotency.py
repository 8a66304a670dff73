"""`Idempotency-Key` on `POST /jobs` (docs/architecture.md, "Idempotency"): the key, the job
it made and the request's fingerprint are written in the transaction that writes the job, so a
retry after any crash finds that job (or, when none was made, makes it afresh); never a second
job, never a lasting 409. The same key with another body within 24 h is 409 CONFLICT. A replay
answers as the first request did: with the job as it now is (202), or 402 when billing
refused it."""

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from kiln_gateway.errors import BadRequest, Conflict
from kiln_gateway.jobs import repository

MAX_KEY_LENGTH = 255
RETENTION = timedelta(hours=24)
REPLAY_HEADER = "Idempotent-Replayed"


def fingerprint(body: Any) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def checked_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise BadRequest(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable characters.",
            [{"field": "Idempotency-Key", "message": "invalid"}],
        )
    return key


def _expired(created: datetime, now: datetime) -> bool:
    created = created if created.tzinfo else created.replace(tzinfo=UTC)
    return created < now - RETENTION


def earlier_job(
    connection: Connection, scope: str, key: str, print_: str, now: datetime
) -> str | None:
    """The job an earlier request with this key made (None: none within 24 h; an expired
    record is deleted). 409 when that request had another body."""
    found = repository.idempotency_record(connection, scope, key)
    if found is None:
        return None
    if _expired(found.created_at, now):
        repository.delete_idempotency_record(connection, found.id)
        return None
    if found.fingerprint != print_:
        raise Conflict(
            "This Idempotency-Key was used with a different request body.",
            [{"field": "Idempotency-Key", "message": "reused with another body"}],
        )
    if found.job_id is None:
        # A record of the earlier scheme (claim, then job, then answer in three
        # transactions) that never got its job: it names nothing, so the request runs afresh.
        repository.delete_idempotency_record(connection, found.id)
        return None
    return str(found.job_id)
