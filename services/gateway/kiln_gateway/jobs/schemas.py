"""API models of jobs: the request body, and the job object rendered from its row."""

from typing import Any, Literal

from pydantic import Field

from kiln_gateway.bodies import Strict
from kiln_gateway.jobs.metadata import Metadata
from kiln_gateway.tables import Job
from kiln_runtime.job_object import FileLinks, JobView, ResultView, render_job


class SandboxOptions(Strict):
    # "timeout": the job gets a short deadline (delay_s, else 2 s) that the sandbox model
    # overruns; the worker ends it with TIMEOUT at that deadline.
    outcome: Literal["completed", "failed", "timeout"] = "completed"
    delay_s: float | None = Field(default=None, ge=0, le=600)


class JobCreate(Strict):
    model: str = Field(min_length=1, max_length=100)
    input: dict[str, Any]
    webhook_url: str | None = Field(default=None, max_length=2048)
    metadata: Metadata | None = None
    sandbox: SandboxOptions | None = None


def job_view(job: Job) -> JobView:
    result = None
    if job.result is not None:
        result = ResultView(
            blob_key=job.result["blob_key"],
            content_type=job.result["content_type"],
            size_bytes=int(job.result["size_bytes"]),
            encryption=job.result["encryption"],
        )
    return JobView(
        id=job.id,
        model=job.model,
        status=job.status,
        input=job.input,
        metadata=job.job_metadata,
        sandbox=job.sandbox,
        created_at=job.created_at,
        started_at=job.started_at,
        completed_at=job.completed_at,
        queue_position=job.queue_position,
        progress=job.progress,
        cost_millicredits=job.cost_millicredits,
        result=result,
        error_code=job.error_code,
        error_message=job.error_message,
        webhook_url=job.webhook_url,
        estimated_start_at=job.estimated_start_at,
        queue_reason=job.queue_reason,
    )


def job_json(job: Job, links: FileLinks) -> dict[str, Any]:
    """The job object of the API (docs/architecture.md, "Job object")."""
    return render_job(job_view(job), links)
