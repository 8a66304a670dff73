"""Jobs in the console: the list with the API's filters, sort and pages (jobs/repository.py);
a job's page with its input, status, queue position, a live timeline, cancel and its result;
the stream the timeline follows; and the encrypted result for the in-browser decrypt.

The timeline is the account's event feed (`GET /api/v1/events`) for the job: what the gateway
learned from the pipeline, in order. The page draws what was there when it was rendered; its
script (static/job.js) follows `/console/jobs/{id}/events`, which sends the entries after that
and the job's state as they come, until the job ends."""

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import RedirectResponse, Response, StreamingResponse

from kiln_gateway.console.auth import AccountForm, CurrentAccount
from kiln_gateway.console.errors import ConsoleError
from kiln_gateway.console.listing import checked_id, notice, page_of
from kiln_gateway.console.pages import render, secure
from kiln_gateway.deps import StateDep
from kiln_gateway.errors import ApiError
from kiln_gateway.jobs import repository
from kiln_gateway.jobs.schemas import job_json
from kiln_gateway.jobs.service import SORTABLE_FIELDS, STATUS_RANK, TERMINAL, JobFilters, JobSort
from kiln_gateway.pagination import PageRequest, pagination
from kiln_gateway.state import GatewayState
from kiln_gateway.tables import AccountEvent, Job
from kiln_gateway.webhooks import repository as webhooks
from kiln_runtime.blobs import iter_chunks
from kiln_runtime.db import transaction

router = APIRouter(include_in_schema=False)

NO_JOB = "There is no such job."
STATUSES = tuple(STATUS_RANK)
STREAM_POLL_S = 0.5
KEEP_ALIVE_S = 15.0


def _datetime_field(text: str) -> datetime | None:
    """A `datetime-local` value (or an ISO timestamp) as UTC; None when empty."""
    text = text.strip()
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"{text[:40]!r} is not a date and time") from exc
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@router.get("/console/jobs")
async def jobs_page(request: Request, user: CurrentAccount, state: StateDep) -> Response:
    query = request.query_params
    page = page_of(request)
    chosen = [s for s in query.getlist("status") if s]
    model = query.get("model", "")[:100]
    sort = query.get("sort", "-created_at")[:40]
    error = ""
    jobs: Sequence[Job] = []
    total = 0
    try:
        after = _datetime_field(query.get("created_after", ""))
        before = _datetime_field(query.get("created_before", ""))
        filters = JobFilters.parse(",".join(chosen) or None, model or None, after, before)
        ordering = JobSort.parse(sort)
    except (ValueError, ApiError) as exc:
        error = f"These filters do not work: {getattr(exc, 'message', str(exc))}"
    else:
        async with state.runtime.sessions() as session:
            jobs, total = await repository.list_jobs(
                session, user.account_id, filters, ordering, page
            )
    # The filters as query pairs, for the pages' links.
    kept = [(k, v) for k, v in query.multi_items() if k not in ("page",) and v]
    return render(
        request,
        "jobs.html",
        {
            "user": user,
            "nav": "jobs",
            "jobs": jobs,
            "pagination": pagination(page, total),
            "statuses": STATUSES,
            "chosen": chosen,
            "model": model,
            "models": [m.id for m in state.catalog.models],
            "sort": sort,
            "sort_fields": SORTABLE_FIELDS,
            "created_after": query.get("created_after", "")[:40],
            "created_before": query.get("created_before", "")[:40],
            "kept": kept,
            "error": error,
        },
    )


async def _job(
    session: AsyncSession, account_id: str, job_id: str, *, for_update: bool = False
) -> Job:
    job = await repository.account_job(session, account_id, job_id, for_update=for_update)
    if job is None:
        raise ConsoleError(404, NO_JOB)
    return job


async def _timeline(
    session: AsyncSession, account_id: str, job_id: str, after: int = 0
) -> Sequence[AccountEvent]:
    """The feed entries of one job after the cursor, in order (the account's index and the
    sequence bound the scan)."""
    return (
        await session.scalars(
            select(AccountEvent)
            .where(
                AccountEvent.account_id == account_id,
                AccountEvent.seq > after,
                AccountEvent.job_id == job_id,
            )
            .order_by(AccountEvent.seq)
            .limit(500)
        )
    ).all()


def timeline_json(entry: AccountEvent) -> dict[str, Any]:
    data = entry.data or {}
    return {
        "seq": entry.seq,
        "type": entry.type,
        "occurred_at": entry.occurred_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
        if entry.occurred_at.tzinfo
        else entry.occurred_at.isoformat() + "Z",
        "status": data.get("status"),
        "progress": data.get("progress"),
        "queue_position": data.get("queue_position"),
    }


def job_state(job: Job, links_json: dict[str, Any]) -> dict[str, Any]:
    """What the page's script updates in place."""
    return {
        "id": job.id,
        "status": job.status,
        "progress": job.progress,
        "queue_position": job.queue_position if job.status == "queued" else None,
        "queue_reason": job.queue_reason if job.status == "queued" else None,
        "estimated_start_at": links_json.get("estimated_start_at"),
        "cost": links_json.get("cost"),
        "error": links_json.get("error"),
        "terminal": job.status in TERMINAL,
    }


@router.get("/console/jobs/{job_id}")
async def job_page(
    job_id: str, request: Request, user: CurrentAccount, state: StateDep
) -> Response:
    checked_id(job_id, "job")
    async with state.runtime.sessions() as session:
        job = await _job(session, user.account_id, job_id)
        timeline = await _timeline(session, user.account_id, job_id)
        deliveries, _ = await webhooks.list_deliveries(
            session,
            user.account_id,
            PageRequest(1, 20),
            job_id=job_id,
            endpoint_id=None,
            status=None,
        )
    rendered = job_json(job, state.links)
    entries = [timeline_json(e) for e in timeline]
    return render(
        request,
        "job.html",
        {
            "user": user,
            "nav": "jobs",
            "job": job,
            "rendered": rendered,
            "state": job_state(job, rendered),
            "timeline": entries,
            "cursor": entries[-1]["seq"] if entries else 0,
            "deliveries": deliveries,
            "cancelable": job.status in ("pending", "queued", "running"),
            "notice": notice(request),
        },
    )


def _sse(event: str, data: dict[str, Any], event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n".encode()


async def _stream(
    state: GatewayState, account_id: str, job_id: str, cursor: int
) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    last: dict[str, Any] | None = None
    quiet_since = loop.time()
    while True:
        async with state.runtime.sessions() as session:
            job = await repository.account_job(session, account_id, job_id)
            entries = await _timeline(session, account_id, job_id, cursor)
        if job is None:
            return
        for entry in entries:
            cursor = entry.seq
            quiet_since = loop.time()
            yield _sse("timeline", timeline_json(entry), entry.seq)
        current = job_state(job, job_json(job, state.links))
        if current != last:
            last = current
            quiet_since = loop.time()
            yield _sse("job", current)
            if current["terminal"]:
                return
        elif loop.time() - quiet_since > KEEP_ALIVE_S:
            quiet_since = loop.time()
            yield b": keep-alive\n\n"
        # Woken by this process's consumer; the timeout covers events another replica took.
        waiter = state.waiters.register(job_id)
        try:
            await waiter.wait(STREAM_POLL_S)
        finally:
            state.waiters.release(job_id, waiter)


@router.get("/console/jobs/{job_id}/events")
async def job_events(
    job_id: str, request: Request, user: CurrentAccount, state: StateDep
) -> Response:
    """Server-Sent Events: `timeline` (a feed entry, with its sequence as the event id, so a
    reconnecting browser resumes after it) and `job` (the job's state) until the job ends."""
    checked_id(job_id, "job")
    async with state.runtime.sessions() as session:
        await _job(session, user.account_id, job_id)
    resume = request.headers.get("last-event-id") or request.query_params.get("after", "")
    cursor = int(resume) if resume.isascii() and resume.isdigit() and len(resume) < 19 else 0
    response = StreamingResponse(
        _stream(state, user.account_id, job_id, cursor),
        media_type="text/event-stream",
        headers={"X-Accel-Buffering": "no"},
    )
    return secure(response)


@router.post("/console/jobs/{job_id}/cancel")
async def cancel_job(
    job_id: str, user: CurrentAccount, form: AccountForm, state: StateDep
) -> Response:
    """As `POST /api/v1/jobs/{id}/cancel`: a pending or queued job is canceled at once, a
    running one is canceling until its worker stops; refunded in full either way."""
    checked_id(job_id, "job")
    async with transaction(state.runtime.sessions) as session:
        job = await _job(session, user.account_id, job_id, for_update=True)
        if job.status in TERMINAL:
            raise ConsoleError(409, f"The job is already {job.status}.")
        if job.status != "canceling":
            # No API key asks: the console's account holder does.
            if not await repository.request_cancel(session, job, "console", datetime.now(UTC)):
                raise ConsoleError(409, f"The job is already {job.status}.")
    state.runtime.publisher.wake()
    return RedirectResponse(f"/console/jobs/{job_id}?notice=job-canceled", status_code=303)


@router.get("/console/jobs/{job_id}/result")
async def encrypted_result(job_id: str, user: CurrentAccount, state: StateDep) -> Response:
    """The job's encrypted result (the `kiln-hpke-v1` blob), for the page's decrypt: from this
    origin, whatever `KILN_PUBLIC_URL` the result's own link uses."""
    checked_id(job_id, "job")
    async with state.runtime.sessions() as session:
        job = await _job(session, user.account_id, job_id)
    blob_key = (job.result or {}).get("blob_key")
    size = state.blobs.size(blob_key) if blob_key else None
    if not blob_key or size is None:
        raise ConsoleError(404, "This job has no result to download.")
    response = StreamingResponse(
        iter_chunks(state.blobs.open(blob_key)),
        media_type="application/octet-stream",
        headers={"Content-Length": str(size)},
    )
    return secure(response)
