"""Job endpoints (`/api/v1/jobs`), for API keys."""

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy.exc import IntegrityError

from kiln_gateway.content_policy import enforce_content_policy
from kiln_gateway.deps import Caller, CallerDep, StateDep
from kiln_gateway.errors import (
    Conflict,
    InsufficientCredits,
    NotFound,
    ValidationFailed,
    error_responses,
)
from kiln_gateway.jobs import repository
from kiln_gateway.jobs.idempotency import REPLAY_HEADER, checked_key, earlier_job, fingerprint
from kiln_gateway.jobs.schemas import JobCreate, job_json
from kiln_gateway.jobs.service import (
    TERMINAL,
    JobFilters,
    JobSort,
    input_errors,
    job_spec,
    new_job,
    url_inputs,
)
from kiln_gateway.pagination import PageDep, paged
from kiln_gateway.query_dates import IsoDatetime
from kiln_gateway.state import GatewayState, Waiter
from kiln_gateway.tables import Job
from kiln_runtime.catalog import ModelEntry
from kiln_runtime.db import transaction
from kiln_runtime.money import format_credits
from kiln_runtime.unit import Unit
from kiln_runtime.url_guard import UnsafeUrl, resolve_public_addresses

router = APIRouter(prefix="/jobs", tags=["jobs"])

JOB_ID = Path(pattern=r"^job_[0-9a-f]{32}$", description="A job id, `job_` + 32 hex digits.")
SSE_JOB_EVENT = {
    "type": "object",
    "description": "One event of the stream (keep-alive comments are not events).",
    "properties": {
        "event": {"type": "string", "enum": ["job"]},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "description": "The job object, as JSON.",
        },
        "id": {"type": "string", "description": "The event's number in this stream, from 1."},
    },
    "required": ["event", "data", "id"],
}
IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", description="Replays the first answer for 24 h."),
]


async def validated_model(body: JobCreate, caller: Caller, state: GatewayState) -> ModelEntry:
    """Everything that makes a job request acceptable, as one 422 naming each bad field."""
    entry = state.catalog.model(body.model)
    if entry is None:
        raise ValidationFailed(
            "Unknown model.", [{"field": "model", "message": f"no model {body.model!r}"}]
        )
    details = input_errors(entry.input_schema, body.input)
    if body.sandbox is not None and not caller.key.sandbox:
        details.append({"field": "sandbox", "message": "only sandbox (sk_test_) keys may set it"})
    # Every URL the job names (its webhook, input images) must reach only the public internet.
    urls = [("webhook_url", body.webhook_url)] if body.webhook_url is not None else []
    urls += [(f"input.{name}", value) for name, value in url_inputs(entry.input_schema, body.input)]
    for field_name, url in urls:
        try:
            await resolve_public_addresses(
                url, allow_loopback=state.settings.allow_loopback_urls, resolver=state.resolver
            )
        except UnsafeUrl as exc:
            details.append({"field": field_name, "message": str(exc)})
    if details:
        raise ValidationFailed("The request has invalid fields.", details)
    enforce_content_policy(state.settings.content_policy_file, entry.kind, body.input)
    return entry


async def _wait_for(state: GatewayState, key: str, timeout_s: float) -> None:
    waiter = state.waiters.register(key)
    try:
        await waiter.wait(timeout_s)
    finally:
        state.waiters.release(key, waiter)


async def _load(state: GatewayState, job_id: str, caller: Caller) -> Job:
    async with state.runtime.sessions() as session:
        job = await repository.account_job(session, caller.account_id, job_id)
    if job is None:
        raise NotFound("No such job.")
    return job


async def _decided(state: GatewayState, waiter: Waiter, job: Job) -> Job:
    """The job once billing decided (`queued`, or `failed` for want of credits), or as it is
    when `decision_wait_s` ran out (`pending`). When this replica's consumer holds the account's
    partition, it wakes the waiter with the job (the row is read again only every second, in
    case the partition moves meanwhile); when another replica's does, the row is read every
    `decision_poll_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + state.settings.decision_wait_s
    consumer = state.runtime.consumer
    current = job
    while current.status == "pending":
        left = deadline - loop.time()
        if left <= 0:
            break
        ours = consumer is not None and consumer.holds_key(job.account_id)
        poll = 1.0 if ours else state.settings.decision_poll_s
        if await waiter.wait(min(left, poll)):
            current = waiter.latest if isinstance(waiter.latest, Job) else current
            waiter.event.clear()
            continue
        found = await state.runtime.read(lambda c: repository.read_job(c, job.id))
        current = found or current
    return current


def _answer(current: Job, entry_id: str, state: GatewayState, replayed: bool) -> JSONResponse:
    if current.status == "failed" and current.error_code == "INSUFFICIENT_CREDITS":
        raise InsufficientCredits(
            "Not enough credits for this job.",
            [{"field": "model", "message": entry_id}],
            headers={REPLAY_HEADER: "true"} if replayed else None,
        )
    return JSONResponse(
        {"data": job_json(current, state.links)},
        status_code=202,
        headers={REPLAY_HEADER: "true"} if replayed else None,
    )


@router.post("", status_code=202, responses=error_responses(402, 409))
async def create_job(
    body: JobCreate,
    caller: CallerDep,
    state: StateDep,
    idempotency_key: IdempotencyKey = None,
    prefer: Annotated[
        str | None,
        Header(
            max_length=200,
            description="`respond-async`: answer 202 `pending` at once, without waiting for "
            "billing's decision.",
        ),
    ] = None,
) -> JSONResponse:
    """Create a job. Answers after billing's decision (up to a bound): 202 `queued`, 402, or
    202 `pending` when the decision is still on its way (or at once, with
    `Prefer: respond-async`). With an `Idempotency-Key`, a retry gets the job the first request
    made (docs/api.md)."""
    key = checked_key(idempotency_key)
    entry = await validated_model(body, caller, state)
    now = datetime.now(UTC)
    job = new_job(body, entry, caller.key, now)
    pool = state.catalog.pool_for(entry.id, caller.key.sandbox)
    spec = job_spec(body, entry, caller.key, pool, now)
    scope = f"{caller.account_id}:POST /jobs"
    print_ = fingerprint(body.model_dump(mode="json")) if key is not None else ""

    def submit(unit: Unit) -> str | Conflict | None:
        """The job, its feed entry, `job.submitted` and the key's record; or the job an
        earlier request with the key made, or the 409 of a key reused with another body
        (nothing written). The 409 is returned, not raised: a write that raises makes its whole
        group commit run again (docs/architecture.md, "Group commit")."""
        if key is not None:
            try:
                earlier = earlier_job(unit.connection, scope, key, print_, unit.now)
            except Conflict as conflict:
                return conflict
            if earlier is not None:
                return earlier
        repository.insert_submitted_job(unit, job, spec)
        if key is not None:
            repository.add_idempotency_record(unit.connection, scope, key, print_, job.id, unit.now)
        return None

    waiter = state.waiters.register(job.id)  # before the commit: no wake-up can be missed
    try:
        try:
            made = await state.runtime.write(submit)
            if isinstance(made, Conflict):
                raise made
            earlier = made
        except IntegrityError:
            if await state.runtime.read(lambda c: repository.read_job(c, job.id)) is not None:
                # Our own insert committed, then its connection dropped before the answer, and
                # the retried transaction found the job: it is made, answer with it.
                earlier = None
            else:
                # A twin with the same key committed first on another replica: it made the job.
                earlier = await state.runtime.read(
                    lambda c: earlier_job(c, scope, key or "", print_, now)
                )
                if earlier is None:
                    raise
        if earlier is None:
            if prefer is not None and "respond-async" in prefer.lower():
                return JSONResponse({"data": job_json(job, state.links)}, status_code=202)
            return _answer(await _decided(state, waiter, job), entry.id, state, replayed=False)
    finally:
        state.waiters.release(job.id, waiter)
    # A replay: the first request's job, as it is now (decided, or decided soon).
    replay_waiter = state.waiters.register(earlier)
    try:
        found = await state.runtime.read(lambda c: repository.read_job(c, earlier))
        if found is None or found.account_id != caller.account_id:
            raise NotFound("No such job.")
        return _answer(await _decided(state, replay_waiter, found), found.model, state, True)
    finally:
        state.waiters.release(earlier, replay_waiter)


@router.post("/quote")
async def quote_job(body: JobCreate, caller: CallerDep, state: StateDep) -> dict[str, Any]:
    """The price the job would cost now, after the same checks as creating it."""
    entry = await validated_model(body, caller, state)
    price = state.catalog.price_millicredits(entry.id, body.input, caller.key.sandbox)
    return {
        "data": {
            "model": entry.id,
            "sandbox": caller.key.sandbox,
            "price": format_credits(price),
        }
    }


@router.get("/count")
async def count_jobs(
    caller: CallerDep,
    state: StateDep,
    status: str | None = Query(default=None, max_length=200),
    model: str | None = Query(default=None, max_length=100),
    created_after: IsoDatetime | None = None,
    created_before: IsoDatetime | None = None,
) -> dict[str, Any]:
    filters = JobFilters.parse(status, model, created_after, created_before)
    async with state.runtime.sessions() as session:
        count = await repository.count_jobs(session, caller.account_id, filters)
    return {"data": {"count": count}}


@router.get("")
async def list_jobs(
    caller: CallerDep,
    state: StateDep,
    page: PageDep,
    status: str | None = Query(default=None, max_length=200),
    model: str | None = Query(default=None, max_length=100),
    created_after: IsoDatetime | None = None,
    created_before: IsoDatetime | None = None,
    sort: str = Query(default="-created_at", max_length=40),
) -> dict[str, Any]:
    filters = JobFilters.parse(status, model, created_after, created_before)
    ordering = JobSort.parse(sort)
    async with state.runtime.sessions() as session:
        jobs, total = await repository.list_jobs(
            session, caller.account_id, filters, ordering, page
        )
    return paged([job_json(j, state.links) for j in jobs], page, total)


@router.get("/{job_id}")
async def get_job(caller: CallerDep, state: StateDep, job_id: str = JOB_ID) -> dict[str, Any]:
    return {"data": job_json(await _load(state, job_id, caller), state.links)}


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    responses={
        200: {"description": "Canceled at once: the job object, `canceled`."},
        **error_responses(409),
    },
)
async def cancel_job(caller: CallerDep, state: StateDep, job_id: str = JOB_ID) -> JSONResponse:
    """Cancel and refund. A queued job is canceled at once; a running one is `canceling` until
    the worker confirms it stopped. A finished job cannot be canceled (409)."""
    now = datetime.now(UTC)
    async with transaction(state.runtime.sessions) as session:
        job = await repository.account_job(session, caller.account_id, job_id, for_update=True)
        if job is None:
            raise NotFound("No such job.")
        if job.status in TERMINAL:
            raise Conflict(f"The job is already {job.status}.")
        if job.status != "canceling" and not await repository.request_cancel(
            session, job, caller.key.id, now
        ):
            raise Conflict(f"The job is already {job.status}.")
    state.runtime.publisher.wake()
    await _wait_for(state, job_id, state.settings.decision_wait_s)
    current = await _load(state, job_id, caller)
    status_code = 200 if current.status == "canceled" else 202
    return JSONResponse({"data": job_json(current, state.links)}, status_code=status_code)


def _sse(event: str, data: dict[str, Any], event_id: int) -> bytes:
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data)}\n\n".encode()


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Server-Sent Events: `event: job` with the job object as `data`.",
            # Before OpenAPI 3.2's `itemSchema`, an event stream's `schema` is one event's.
            "content": {"text/event-stream": {"schema": SSE_JOB_EVENT}},
        }
    },
)
async def job_events(caller: CallerDep, state: StateDep, job_id: str = JOB_ID) -> StreamingResponse:
    """Server-Sent Events: one `job` event per change of status, progress or queue position,
    closing after the job ends. Keep-alive comments every 15 s."""
    await _load(state, job_id, caller)

    async def stream() -> AsyncIterator[bytes]:
        last: tuple[Any, ...] | None = None
        sent = 0
        quiet_since = asyncio.get_running_loop().time()
        while True:
            job = await _load(state, job_id, caller)
            seen = (job.status, round(job.progress, 3), job.queue_position, job.queue_reason)
            if seen != last:
                last = seen
                sent += 1
                quiet_since = asyncio.get_running_loop().time()
                yield _sse("job", job_json(job, state.links), sent)
                if job.status in TERMINAL:
                    return
            elif asyncio.get_running_loop().time() - quiet_since > 15:
                quiet_since = asyncio.get_running_loop().time()
                yield b": keep-alive\n\n"
            # Woken by this process's consumer; the timeout covers events another replica took.
            await _wait_for(state, job_id, 0.5)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
