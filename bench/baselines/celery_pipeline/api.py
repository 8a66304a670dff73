"""The baseline's HTTP endpoint: ``POST /api/v1/jobs``, shaped like Kiln's.

    uvicorn bench.baselines.celery_pipeline.api:app --port 8000

One request: find the account by its API key's hash, check and debit the job's price and insert
the job (queued), all in one SQL transaction (db.charge_and_insert), then publish the Celery
task and answer ``202 {"data": {"id", "status": "queued"}}``; ``402 INSUFFICIENT_CREDITS`` when
the balance is short (nothing is queued then). Sandbox jobs (every job here: the model is
Triton's ``sandbox`` model) are charged like any other, unlike Kiln's sandbox keys, so that the
credit check and charge are part of every request this baseline serves.

The endpoint is a plain ``def``: SQLAlchemy's sync engine and Celery's ``apply_async`` block,
so FastAPI runs it on its thread pool, the usual way to put Celery behind FastAPI.
"""

from __future__ import annotations

import logging
import threading
from typing import Annotated, Any, Final, Literal

from fastapi import FastAPI, Header
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Engine

from bench.baselines.celery_pipeline import db
from bench.baselines.celery_pipeline.settings import Settings
from bench.baselines.celery_pipeline.tasks import run_job

LOGGER = logging.getLogger(__name__)

# model id -> (the sandbox model's kind, price in credits): Kiln's catalog prices
MODELS: Final[dict[str, tuple[str, int]]] = {
    "kiln/text-to-speech": ("audio", 2),
    "kiln/prompt-to-image": ("image", 5),
    "kiln/image-edit": ("image", 6),
    "kiln/image-to-video": ("video", 12),
}


class SandboxOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    outcome: Literal["completed", "failed"] = "completed"
    delay_s: float | None = Field(default=None, ge=0, le=600)


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=100)
    input: dict[str, Any]
    webhook_url: str | None = Field(default=None, max_length=2048)
    sandbox: SandboxOptions | None = None


app = FastAPI(title="Kiln baseline: Celery on Redis")
settings = Settings.from_env()
_engine: Engine | None = None
_engine_lock = threading.Lock()


def engine() -> Engine:
    global _engine
    with _engine_lock:
        if _engine is None:
            _engine = db.make_engine(settings.db_path)
        return _engine


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


@app.get("/healthz")
def healthz() -> dict[str, bool]:
    return {"ok": True}


@app.post("/api/v1/jobs", status_code=202)
def create_job(
    body: JobCreate, authorization: Annotated[str | None, Header()] = None
) -> JSONResponse:
    scheme, _, api_key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not api_key:
        return _error(401, "UNAUTHORIZED", "send Authorization: Bearer <api key>")
    model = MODELS.get(body.model)
    if model is None:
        return _error(404, "MODEL_NOT_FOUND", f"no model {body.model!r}")
    kind, price = model
    sandbox = body.sandbox or SandboxOptions()
    job = db.NewJob(
        model=body.model,
        kind=kind,
        price=price,
        webhook_url=body.webhook_url,
        delay_ms=None if sandbox.delay_s is None else round(sandbox.delay_s * 1000),
        outcome=sandbox.outcome,
    )
    try:
        job_id = db.charge_and_insert(engine(), api_key, job)
    except db.UnknownKey:
        return _error(401, "UNAUTHORIZED", "unknown API key")
    except db.InsufficientCredits:
        return _error(402, "INSUFFICIENT_CREDITS", f"this job costs {price} credits")
    try:
        run_job.apply_async((job_id,))
    except Exception:
        # the job was charged but never queued: give the credits back
        LOGGER.exception("job %s: publishing the task failed", job_id)
        db.fail_job(engine(), job_id, "QUEUE_UNAVAILABLE")
        return _error(503, "QUEUE_UNAVAILABLE", "the job queue is unavailable, try again")
    return JSONResponse({"data": {"id": job_id, "status": db.QUEUED}}, status_code=202)
