"""`Idempotency-Key` on POSTs that create something: the same key and body within 24 h get
the first answer again (no second job, no second charge), even when the two requests race;
the same key with another body is 409 CONFLICT."""

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError

from kiln_gateway.errors import ApiError, BadRequest, Conflict, error_response
from kiln_gateway.jobs import repository
from kiln_gateway.state import GatewayState
from kiln_gateway.tables import IdempotencyRecord
from kiln_runtime.db import transaction

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


def _expired(record: IdempotencyRecord, now: datetime) -> bool:
    created = (
        record.created_at if record.created_at.tzinfo else record.created_at.replace(tzinfo=UTC)
    )
    return created < now - RETENTION


async def _claim(
    state: GatewayState, scope: str, key: str, print_: str
) -> IdempotencyRecord | None:
    """Insert the in-progress record; None when we own it, else the existing record."""
    now = datetime.now(UTC)
    try:
        async with transaction(state.runtime.sessions) as session:
            existing = await repository.idempotency_record(session, scope, key)
            if existing is not None and _expired(existing, now):
                await repository.delete_idempotency_record(session, existing.id)
                existing = None
            if existing is not None:
                return existing
            repository.add_idempotency_claim(session, scope, key, print_, now)
        return None
    except IntegrityError:
        # The racing twin inserted first; read what it wrote.
        async with state.runtime.sessions() as session:
            return await repository.idempotency_record(session, scope, key)


async def _finish(state: GatewayState, scope: str, key: str, response: JSONResponse | None) -> None:
    async with transaction(state.runtime.sessions) as session:
        record = await repository.idempotency_record(session, scope, key)
        if record is None:
            return
        if response is None or response.status_code >= 500:
            # A server error may be retried with the same key.
            await repository.delete_idempotency_record(session, record.id)
            return
        record.status_code = response.status_code
        record.body = json.loads(bytes(response.body))


def _replay(request: Request, record: IdempotencyRecord) -> JSONResponse:
    assert record.status_code is not None and record.body is not None
    return JSONResponse(
        record.body, status_code=record.status_code, headers={REPLAY_HEADER: "true"}
    )


async def run_idempotently(
    request: Request,
    state: GatewayState,
    *,
    scope: str,
    key: str | None,
    body: Any,
    produce: Callable[[], Awaitable[JSONResponse]],
    wait_s: float = 10.0,
) -> JSONResponse:
    key = checked_key(key)
    if key is None:
        return await produce()
    print_ = fingerprint(body)
    existing = await _claim(state, scope, key, print_)
    deadline = asyncio.get_running_loop().time() + wait_s
    while existing is not None:
        if existing.fingerprint != print_:
            raise Conflict(
                "This Idempotency-Key was used with a different request body.",
                [{"field": "Idempotency-Key", "message": "reused with another body"}],
            )
        if existing.status_code is not None:
            return _replay(request, existing)
        if asyncio.get_running_loop().time() > deadline:
            raise Conflict("A request with this Idempotency-Key is still in progress.")
        await asyncio.sleep(0.05)
        async with state.runtime.sessions() as session:
            existing = await repository.idempotency_record_by_id(session, existing.id)
        if existing is None:  # the first request failed with a server error: take over
            existing = await _claim(state, scope, key, print_)
    response: JSONResponse | None = None
    try:
        try:
            response = await produce()
        except ApiError as exc:
            response = error_response(request, exc.status, exc.code, exc.message, exc.details)
        return response
    finally:
        await _finish(state, scope, key, response)
