"""The jobs' decisions, as pure functions: how the read model moves with each pipeline event,
what makes an input valid, what a new job and its `job.submitted` spec hold, and which
filters and sort orders a listing takes."""

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from jsonschema import Draft202012Validator

from kiln_contracts import timestamp
from kiln_contracts.v1 import common_pb2
from kiln_gateway.errors import ValidationFailed
from kiln_gateway.ids import new_id
from kiln_gateway.jobs.schemas import JobCreate
from kiln_gateway.tables import ApiKey, Job
from kiln_runtime.catalog import ModelEntry
from kiln_runtime.money import format_credits

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

SORTABLE_FIELDS = ("created_at", "started_at", "completed_at", "status", "model")


def next_status(current: str, event_type: str) -> str | None:
    """The job's new status after `event_type`, or None to leave it. Events may arrive late
    or twice: a job never moves backwards and never leaves a final state."""
    target = EVENT_STATUS.get(event_type)
    if target is None or current in TERMINAL:
        return None
    if STATUS_RANK[target] <= STATUS_RANK[current] and target not in TERMINAL:
        return None
    return target


# The catalog's schemas live as long as the process: one compiled validator each, not one
# per request (keyed by identity, the schema kept alongside so that the id stays its own).
_VALIDATORS: dict[int, tuple[dict[str, Any], Draft202012Validator]] = {}


def validator_for(schema: dict[str, Any]) -> Draft202012Validator:
    found = _VALIDATORS.get(id(schema))
    if found is None or found[0] is not schema:
        found = (schema, Draft202012Validator(schema))
        if len(_VALIDATORS) > 1024:
            _VALIDATORS.clear()
        _VALIDATORS[id(schema)] = found
    return found[1]


def input_errors(schema: dict[str, Any], value: Any) -> list[dict[str, str]]:
    """Every way `value` breaks `schema`, each naming its field as `input.<path>`."""
    validator = validator_for(schema)
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


def new_job(body: JobCreate, entry: ModelEntry, key: ApiKey, now: datetime) -> Job:
    """The read model's row of a job just submitted (`pending` until billing decides)."""
    return Job(
        id=new_id("job"),
        account_id=key.account_id,
        api_key_id=key.id,
        model=entry.id,
        status="pending",
        input=body.input,
        job_metadata=body.metadata,
        sandbox=key.sandbox,
        webhook_url=body.webhook_url,
        created_at=now,
        progress=0.0,
    )


def job_spec(
    body: JobCreate, entry: ModelEntry, key: ApiKey, pool: str, now: datetime
) -> common_pb2.JobSpec:
    """What `job.submitted` tells the pipeline about the job."""
    spec = common_pb2.JobSpec(
        model=entry.id,
        input_json=json.dumps(body.input, separators=(",", ":"), sort_keys=True),
        metadata_json=json.dumps(body.metadata) if body.metadata is not None else "",
        sandbox=key.sandbox,
        webhook_url=body.webhook_url or "",
        result_key=common_pb2.ResultKey(
            key_id=key.id,
            public_key=key.result_public_key,
            salt=key.result_salt,
        ),
        pool=pool,
        created_at=timestamp(now),
        deadline=timestamp(now + timedelta(seconds=entry.deadline_s)),
        api_key_id=key.id,
    )
    if key.sandbox and body.sandbox is not None:
        spec.sandbox_outcome = body.sandbox.outcome
        if body.sandbox.delay_s is not None:
            spec.sandbox_delay_ms = int(body.sandbox.delay_s * 1000)
        if body.sandbox.outcome == "timeout":
            limit_s = body.sandbox.delay_s if body.sandbox.delay_s is not None else 2.0
            spec.deadline.CopyFrom(timestamp(now + timedelta(seconds=limit_s)))
    return spec


def job_summary(job: Job) -> dict[str, Any]:
    """What an entry of the account's event feed (`GET /events`) says about its job."""
    error = {"code": job.error_code, "message": job.error_message} if job.error_code else None
    return {
        "job_id": job.id,
        "model": job.model,
        "status": job.status,
        "progress": job.progress,
        "queue_position": job.queue_position if job.status == "queued" else None,
        "cost": None if job.cost_millicredits is None else format_credits(job.cost_millicredits),
        "error": error,
    }


@dataclass(frozen=True)
class JobFilters:
    status: list[str] | None = None
    model: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None

    @classmethod
    def parse(
        cls,
        status: str | None,
        model: str | None,
        created_after: datetime | None,
        created_before: datetime | None,
    ) -> "JobFilters":
        statuses = None
        if status is not None:
            statuses = [s.strip() for s in status.split(",") if s.strip()]
            unknown = [s for s in statuses if s not in STATUS_RANK]
            if unknown or not statuses:
                raise ValidationFailed(
                    "Unknown job status.",
                    [{"field": "status", "message": f"one or more of {', '.join(STATUS_RANK)}"}],
                )
        return cls(statuses, model, created_after, created_before)


@dataclass(frozen=True)
class JobSort:
    field: str
    descending: bool

    @classmethod
    def parse(cls, sort: str) -> "JobSort":
        """`field` or `-field` (descending), for a field of SORTABLE_FIELDS."""
        descending = sort.startswith("-")
        name = sort.removeprefix("-")
        if name not in SORTABLE_FIELDS:
            raise ValidationFailed(
                "Unknown sort field.",
                [
                    {
                        "field": "sort",
                        "message": f"one of {', '.join(SORTABLE_FIELDS)}, '-' for descending",
                    }
                ],
            )
        return cls(name, descending)
