"""The Celery application and its one task: run a job on Triton, record it, send its webhook.

    celery -A bench.baselines.celery_pipeline.tasks worker --pool threads --concurrency 8 ...

The task is idempotent, so retrying it is safe: a job that is no longer queued is not run
again, only its webhook is sent. A webhook that cannot be delivered (connection error, timeout,
429 or 5xx) retries the task with an exponential backoff (1 s, 2 s, 4 s ... with jitter, at most
6 times); a model error fails the job and refunds its price; Triton being unreachable retries
the task a few times first.

Configuration (and why):

* no result backend (``task_ignore_result``): the outcome lives in SQL and goes out by webhook;
* ``task_acks_late`` with ``task_reject_on_worker_lost``: a job whose worker dies is run again
  (it costs the same Redis commands as an early ack, just later);
* prefetch multiplier 4 (KILN_BASELINE_PREFETCH_MULTIPLIER): the tasks are short, so each
  worker slot keeps a few at hand instead of a round trip to Redis per task;
* JSON serialization; rate limits off (none are used).
"""

from __future__ import annotations

import logging
import mimetypes
import os
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

import httpx
from celery import Celery, Task
from celery.signals import worker_ready
from sqlalchemy import Engine

from bench.baselines.celery_pipeline import db
from bench.baselines.celery_pipeline.settings import QUEUE, Settings

LOGGER = logging.getLogger(__name__)

RUN_JOB: Final = "kiln_baseline.run_job"
WEBHOOK_TIMEOUT_S: Final = 10.0
MODEL_RETRIES: Final = 3

settings = Settings.from_env()

app = Celery("kiln_baseline", broker=settings.redis_url)
app.conf.update(
    task_default_queue=QUEUE,
    task_ignore_result=True,
    task_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=settings.prefetch_multiplier,
    worker_disable_rate_limits=True,
    # the endpoint publishes from its whole thread pool: one broker connection per thread
    broker_pool_limit=64,
    # Redis connections per channel: the worker acks from each of its threads or greenlets at
    # once (kombu's default of 10 loses acks under the gevent pool with 32 greenlets)
    broker_transport_options={"max_connections": 128},
    broker_connection_retry_on_startup=True,
)


def _cooperative_grpc() -> None:
    # Under the gevent pool (which monkey-patches before this module is imported) a gRPC call
    # would block every other task of the process unless gRPC is told to yield to gevent.
    if "gevent" not in sys.modules:
        return
    from gevent import monkey

    if monkey.is_module_patched("socket"):
        from grpc.experimental import gevent as grpc_gevent

        grpc_gevent.init_gevent()


_cooperative_grpc()

# httpx logs every request at INFO: a line per webhook next to Celery's own two per task
logging.getLogger("httpx").setLevel(logging.WARNING)


class WebhookRetry(Exception):
    """The receiver answered 429 or 5xx: try the delivery again later."""


# Per process (see inference._client): engines and HTTP clients must not cross a fork.
_engines: dict[int, Engine] = {}
_http_clients: dict[int, httpx.Client] = {}
_lock = threading.Lock()


def _engine() -> Engine:
    with _lock:
        engine = _engines.get(os.getpid())
        if engine is None:
            engine = _engines[os.getpid()] = db.make_engine(settings.db_path)
        return engine


def _http() -> httpx.Client:
    with _lock:
        client = _http_clients.get(os.getpid())
        if client is None:
            client = _http_clients[os.getpid()] = httpx.Client(timeout=WEBHOOK_TIMEOUT_S)
        return client


def _result_path(job_id: str, content_type: str) -> Path:
    extension = mimetypes.guess_extension(content_type) or ".bin"
    return settings.results_dir / f"{job_id}{extension}"


def _run_model(task: Task, engine: Engine, job: db.Job) -> db.Job:
    # imported here, not at the top, to keep tritonclient out of the HTTP endpoint's process
    from bench.baselines.celery_pipeline import inference

    try:
        data, content_type = inference.run_sandbox(
            settings.triton_grpc_url, job.kind, job.delay_ms, job.outcome
        )
    except inference.ModelError as exc:
        if exc.retryable and task.request.retries < MODEL_RETRIES:
            raise task.retry(exc=exc, countdown=2**task.request.retries) from None
        db.fail_job(engine, job.id, exc.code)
        return replace(job, status=db.FAILED, error_code=exc.code)
    path = _result_path(job.id, content_type)
    path.write_bytes(data)
    db.complete_job(engine, job.id, str(path))
    return replace(job, status=db.COMPLETED)


def _send_webhook(job: db.Job) -> None:
    if job.webhook_url is None:
        return
    data: dict[str, Any] = {"id": job.id, "status": job.status}
    if job.error_code is not None:
        data["error"] = {"code": job.error_code}
    response = _http().post(job.webhook_url, json={"type": f"job.{job.status}", "data": data})
    if response.status_code == 429 or response.status_code >= 500:
        raise WebhookRetry(f"the webhook receiver answered {response.status_code}")
    if response.status_code >= 400:
        LOGGER.warning("job %s: webhook refused (%d), dropped", job.id, response.status_code)


@app.task(  # type: ignore[untyped-decorator]
    name=RUN_JOB,
    bind=True,
    autoretry_for=(httpx.TransportError, WebhookRetry),
    retry_backoff=1,
    retry_backoff_max=30,
    retry_jitter=True,
    max_retries=6,
)
def run_job(self: Task, job_id: str) -> None:
    engine = _engine()
    job = db.get_job(engine, job_id)
    if job is None:
        LOGGER.warning("job %s: not in the database, dropped", job_id)
        return
    if job.status == db.QUEUED:
        job = _run_model(self, engine, job)
    _send_webhook(job)


@worker_ready.connect  # type: ignore[untyped-decorator]
def _mark_ready(**_: Any) -> None:
    # the launcher waits for this file instead of polling the worker over the broker
    settings.results_dir.mkdir(parents=True, exist_ok=True)
    if settings.ready_file is not None:
        settings.ready_file.write_text(f"{os.getpid()}\n")
