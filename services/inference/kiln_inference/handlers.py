"""The inference worker's event handlers (docs/architecture.md, "Inference").

Accepting a dispatched attempt is a row in the batch's transaction (so the offset moves on at
once and a long model run never holds a partition); the attempt starts as soon as the batch
commits. A cancel ends a job's attempt here and now — its item is deleted and `CANCELED`
emitted in the same transaction — and then stops the attempt's task if it runs: whichever of the
cancel and the attempt's own end commits first is the attempt's only outcome. The job id is
remembered, so a dispatch that arrives after its cancel never runs. The same handler takes the
cancels that `cancel_watch.py` reads outside the group, for attempts whose partition moved.
"""

from __future__ import annotations

from typing import Protocol

from kiln_contracts import Event, timestamp
from kiln_contracts.v1 import jobs_pb2
from kiln_inference import repository
from kiln_inference.attempts import public_message
from kiln_inference.metrics import ATTEMPTS
from kiln_inference.repository import WorkItemRow
from kiln_runtime.batches import EventHandlers
from kiln_runtime.unit import Unit

CANCELED = "CANCELED"


class Runner(Protocol):
    """What the handlers need of the worker (worker.Worker)."""

    def start(self, item: WorkItemRow) -> None: ...

    def stop(self, job_id: str) -> None: ...


def emit_attempt_failed(
    unit: Unit,
    *,
    account_id: str,
    job_id: str,
    attempt: int,
    code: str,
    retryable: bool,
    worker_id: str,
    message: str | None = None,
) -> None:
    unit.emit(
        "job.attempt_failed",
        jobs_pb2.JobAttemptFailed(
            attempt=attempt,
            error_code=code,
            error_message=message or public_message(code),
            retryable=retryable,
            failed_at=timestamp(unit.now),
            worker_id=worker_id,
        ),
        account_id=account_id,
        job_id=job_id,
    )


def model_of(dispatch: bytes) -> str:
    message = jobs_pb2.JobDispatched()
    message.ParseFromString(dispatch)
    return message.spec.model


class Inference:
    def __init__(self, worker_id: str, runner: Runner | None = None) -> None:
        self.worker_id = worker_id
        self.runner = runner

    def handlers(self) -> EventHandlers:
        return EventHandlers(
            {
                "job.dispatched": self.handle_job_dispatched,
                "job.cancel_requested": self.handle_cancel_requested,
            }
        )

    def handle_job_dispatched(self, unit: Unit, event: Event) -> None:
        dispatched = event.message
        assert isinstance(dispatched, jobs_pb2.JobDispatched)
        if repository.is_canceled(unit.connection, event.job_id):
            emit_attempt_failed(
                unit,
                account_id=event.account_id,
                job_id=event.job_id,
                attempt=dispatched.attempt,
                code=CANCELED,
                retryable=False,
                worker_id=self.worker_id,
            )
            return
        item = WorkItemRow(
            id=f"{event.job_id}:{dispatched.attempt}",
            job_id=event.job_id,
            account_id=event.account_id,
            dispatch=dispatched.SerializeToString(deterministic=True),
            attempt=dispatched.attempt,
        )
        accepted = repository.accept_item(
            unit.connection,
            item_id=item.id,
            job_id=item.job_id,
            account_id=item.account_id,
            dispatch=item.dispatch,
            attempt=item.attempt,
            now=unit.now,
        )
        runner = self.runner
        if accepted and runner is not None:
            unit.after_commit(lambda: runner.start(item))

    def handle_cancel_requested(self, unit: Unit, event: Event) -> None:
        repository.mark_canceled(unit.connection, event.job_id, unit.now)
        for item in repository.items_of_job(unit.connection, event.job_id):
            if not repository.delete_item(unit.connection, item.id):
                continue  # another transaction deleted it first and said so
            emit_attempt_failed(
                unit,
                account_id=item.account_id,
                job_id=item.job_id,
                attempt=item.attempt,
                code=CANCELED,
                retryable=False,
                worker_id=self.worker_id,
            )
            unit.after_commit(ATTEMPTS.labels(model_of(item.dispatch), "canceled").inc)
        runner = self.runner
        if runner is not None:
            job_id = event.job_id
            unit.after_commit(lambda: runner.stop(job_id))
