"""Job endpoints (`/api/v1/jobs`), for API keys."""

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import func, select

from kiln_contracts.v1 import common_pb2, jobs_pb2
from kiln_gateway.content_policy import enforce_content_policy
from kiln_gateway.deps import CallerDep, StateDep
from kiln_gateway.errors import InsufficientCredits, NotFound, ValidationFailed, error_responses
from kiln_gateway.models import MESSAGING, Job
from kiln_gateway.schemas import JobCreate
from kiln_gateway.service import input_errors, new_id
from kiln_gateway.views import job_json
from kiln_runtime.db import transaction
from kiln_runtime.outbox import Outbox
from kiln_runtime.url_guard import UnsafeUrl, resolve_public_addresses

router = APIRouter(prefix="/jobs", tags=["jobs"])

JOB_ID = Path(pattern=r"^job_[0-9a-f]{32}$", description="A job id, `job_` + 32 hex digits.")


def _ts(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


@router.post("", status_code=202, responses=error_responses(402))
async def create_job(body: JobCreate, caller: CallerDep, state: StateDep) -> JSONResponse:
    entry = state.catalog.model(body.model)
    if entry is None:
        raise ValidationFailed(
            "Unknown model.", [{"field": "model", "message": f"no model {body.model!r}"}]
        )
    details = input_errors(entry.input_schema, body.input)
    if body.sandbox is not None and not caller.key.sandbox:
        details.append({"field": "sandbox", "message": "only sandbox (sk_test_) keys may set it"})
    if body.webhook_url is not None:
        try:
            await resolve_public_addresses(
                body.webhook_url, allow_loopback=state.settings.allow_loopback_urls
            )
        except UnsafeUrl as exc:
            details.append({"field": "webhook_url", "message": str(exc)})
    if details:
        raise ValidationFailed("The request has invalid fields.", details)
    enforce_content_policy(state.settings.content_policy_file, entry.kind, body.input)

    now = datetime.now(UTC)
    job = Job(
        id=new_id("job"),
        account_id=caller.account_id,
        api_key_id=caller.key.id,
        model=entry.id,
        status="pending",
        input=body.input,
        job_metadata=body.metadata,
        sandbox=caller.key.sandbox,
        webhook_url=body.webhook_url,
        created_at=now,
        progress=0.0,
    )
    spec = common_pb2.JobSpec(
        model=entry.id,
        input_json=json.dumps(body.input, separators=(",", ":"), sort_keys=True),
        metadata_json=json.dumps(body.metadata) if body.metadata is not None else "",
        sandbox=caller.key.sandbox,
        webhook_url=body.webhook_url or "",
        result_key=common_pb2.ResultKey(
            key_id=caller.key.id,
            public_key=caller.key.result_public_key,
            salt=caller.key.result_salt,
        ),
        pool=state.catalog.pool_for(entry.id, caller.key.sandbox),
        created_at=_ts(now),
        deadline=_ts(now + timedelta(seconds=entry.deadline_s)),
        api_key_id=caller.key.id,
    )
    if caller.key.sandbox and body.sandbox is not None:
        spec.sandbox_outcome = body.sandbox.outcome
        if body.sandbox.delay_s is not None:
            spec.sandbox_delay_ms = int(body.sandbox.delay_s * 1000)

    waiter = state.waiters.register(job.id)
    try:
        async with transaction(state.runtime.sessions) as session:
            session.add(job)
            outbox = Outbox()
            outbox.emit(
                "job.submitted",
                jobs_pb2.JobSubmitted(spec=spec),
                account_id=caller.account_id,
                job_id=job.id,
            )
            await outbox.write(session, MESSAGING)
        state.runtime.relay.wake()
        try:
            await asyncio.wait_for(waiter.wait(), timeout=state.settings.decision_wait_s)
        except TimeoutError:
            pass  # answered as `pending`; the decision follows by the same paths
    finally:
        state.waiters.release(job.id, waiter)
    async with state.runtime.sessions() as session:
        current = await session.get(Job, job.id)
    assert current is not None
    if current.status == "failed" and current.error_code == "INSUFFICIENT_CREDITS":
        raise InsufficientCredits(
            "Not enough credits for this job.", [{"field": "model", "message": entry.id}]
        )
    return JSONResponse({"data": job_json(current, state.links)}, status_code=202)


@router.get("/{job_id}")
async def get_job(caller: CallerDep, state: StateDep, job_id: str = JOB_ID) -> dict[str, Any]:
    async with state.runtime.sessions() as session:
        job = await session.get(Job, job_id)
    # Another account's job is indistinguishable from a missing one.
    if job is None or job.account_id != caller.account_id:
        raise NotFound("No such job.")
    return {"data": job_json(job, state.links)}


@router.get("")
async def list_jobs(
    caller: CallerDep,
    state: StateDep,
    page: int = Query(default=1, ge=1, le=100_000),
    per_page: int = Query(default=25, ge=1, le=100),
) -> dict[str, Any]:
    async with state.runtime.sessions() as session:
        where = Job.account_id == caller.account_id
        total = int(await session.scalar(select(func.count()).select_from(Job).where(where)) or 0)
        jobs = (
            await session.scalars(
                select(Job)
                .where(where)
                .order_by(Job.created_at.desc(), Job.id)
                .offset((page - 1) * per_page)
                .limit(per_page)
            )
        ).all()
    return {
        "data": [job_json(j, state.links) for j in jobs],
        "pagination": {
            "page": page,
            "per_page": per_page,
            "total_pages": (total + per_page - 1) // per_page,
            "total_results": total,
        },
    }
