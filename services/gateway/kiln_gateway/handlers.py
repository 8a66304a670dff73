"""The gateway's read model: jobs, balances and the webhook delivery log as the pipeline's events
report them (docs/architecture.md, "Gateway").

A batch's events are projected in memory: `before_batch` loads the jobs and balances they name
(one query each), each handler changes those rows, and `after_batch` writes only the rows that
changed (one statement per table) with the account feed entries they make. After the commit,
requests waiting in this process for one of those jobs (`POST /jobs` for billing's decision, a
job's event stream) are woken with the job as it now is.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import Connection, Table, bindparam, insert, select, update

from kiln_contracts import Event
from kiln_contracts.v1 import common_pb2, credits_pb2, jobs_pb2, webhooks_pb2
from kiln_gateway.jobs.repository import job_from_row
from kiln_gateway.jobs.service import job_summary, next_status
from kiln_gateway.tables import (
    AccountEvent,
    Balance,
    Grant,
    Job,
    WebhookAttemptRecord,
    WebhookDeliveryRecord,
    WebhookEndpoint,
)
from kiln_runtime.batches import EventHandlers
from kiln_runtime.unit import Unit

jobs_table = cast(Table, Job.__table__)
balances_table = cast(Table, Balance.__table__)
events_table = cast(Table, AccountEvent.__table__)
deliveries_table = cast(Table, WebhookDeliveryRecord.__table__)
attempts_table = cast(Table, WebhookAttemptRecord.__table__)

# The job columns the pipeline's events change (the rest are the request's own).
JOB_CHANGES = (
    "status",
    "started_at",
    "completed_at",
    "queue_position",
    "progress",
    "cost_millicredits",
    "result",
    "error_code",
    "error_message",
    "estimated_start_at",
    "queue_reason",
)
_UPDATE_JOB = (
    update(jobs_table)
    .where(jobs_table.c.id == bindparam("key_id"))
    .values({name: bindparam(f"v_{name}") for name in JOB_CHANGES})
)
_INSERT_EVENTS = insert(events_table)
# Built once, like the two above: building a statement costs more than SQLite running it.
_JOBS_FOR_UPDATE = (
    select(jobs_table)
    .where(jobs_table.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(jobs_table.c.id)
    .with_for_update()
)
_BALANCES = select(balances_table).where(
    balances_table.c.account_id.in_(bindparam("accounts", expanding=True))
)
_BALANCE_VALUES: dict[str, Any] = {
    "available_millicredits": bindparam("available"),
    "reserved_millicredits": bindparam("reserved"),
    "as_of": bindparam("as_of"),
    "version": bindparam("version"),
}
_INSERT_BALANCE = insert(balances_table).values(account_id=bindparam("account"), **_BALANCE_VALUES)
_UPDATE_BALANCE = (
    update(balances_table)
    .where(balances_table.c.account_id == bindparam("account"))
    .values(**_BALANCE_VALUES)
)
_DELIVERY_STATES = select(
    deliveries_table.c.id, deliveries_table.c.account_id, deliveries_table.c.attempts
).where(deliveries_table.c.id.in_(bindparam("ids", expanding=True)))
_LOGGED_ATTEMPTS = select(attempts_table.c.delivery_id, attempts_table.c.attempt).where(
    attempts_table.c.delivery_id.in_(bindparam("ids", expanding=True))
)

# Events that change what a client sees of its job or its balance. `job.dispatched` changes
# neither (a dispatched job is still `queued` to its client): the gateway does not consume it.
READ_MODEL_TOPICS = (
    "credits.applied",
    "credits.reserved",
    "credits.rejected",
    "credits.captured",
    "credits.released",
    "job.queued",
    "job.started",
    "job.progress",
    "job.completed",
    "job.failed",
    "job.canceled",
)
LEDGER_EVENTS = frozenset({"credits.captured", "credits.released"})
WEBHOOK_TOPICS = ("webhook.attempted", "webhook.delivered", "webhook.failed")

# Told, after the commit, of each job a batch changed (its id and the job) and of each grant
# billing booked (its id): requests of this process waiting for them wake up.
Notify = Callable[[str, Any], None]


def _when(ts: Timestamp, fallback: datetime) -> datetime:
    if ts.seconds == 0 and ts.nanos == 0:
        return fallback
    return ts.ToDatetime(tzinfo=UTC)


def _aware(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass(frozen=True)
class Announced:
    """A balance billing announced: the balances, when, and billing's version of them."""

    available: int
    reserved: int
    as_of: datetime | None
    version: int


def supersedes(new: Announced, kept: Announced) -> bool:
    """Whether an announcement replaces the one kept. By version when both have one (billing
    adds one with every change of the account's balances); a versioned one always replaces one
    from before versions (0) and never yields to it, whatever the clocks say; by time only
    between two without a version. Time alone cannot order them: the events of one billing
    batch share their time, and their topics are read in no particular order."""
    if new.version and kept.version:
        return new.version > kept.version
    if new.version or kept.version:
        return bool(new.version)
    return kept.as_of is None or new.as_of is None or new.as_of >= kept.as_of


def _changes(job: Job) -> tuple[Any, ...]:
    return tuple(getattr(job, name) for name in JOB_CHANGES)


@dataclass
class _Batch:
    """What one transaction of the read model has loaded and changed."""

    unit: Unit
    jobs: dict[str, Job | None] = field(default_factory=dict)
    seen: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # as loaded
    balances: dict[str, Announced | None] = field(default_factory=dict)
    balance_changes: dict[str, Announced] = field(default_factory=dict)
    feed: list[dict[str, Any]] = field(default_factory=list)
    attempts: list[tuple[str, Attempt]] = field(default_factory=list)  # (account, attempt)


class ReadModel:
    def __init__(self, notify: Notify | None = None) -> None:
        self.notify = notify
        self._batch: _Batch | None = None

    def handlers(self) -> EventHandlers:
        handlers: dict[str, Callable[[Unit, Event], None]] = dict.fromkeys(
            READ_MODEL_TOPICS, self.handle_job_event
        )
        handlers["webhook.attempted"] = self.handle_webhook_attempted
        handlers["webhook.delivered"] = self.handle_webhook_finished
        handlers["webhook.failed"] = self.handle_webhook_finished
        return EventHandlers(handlers, before_batch=self.before_batch, after_batch=self.after_batch)

    # --- loading and writing ------------------------------------------------------------------

    def _for(self, unit: Unit) -> _Batch:
        if self._batch is None or self._batch.unit is not unit:
            self._batch = _Batch(unit)
        return self._batch

    def before_batch(self, unit: Unit, events: Sequence[Event]) -> None:
        batch = self._for(unit)
        self._load_jobs(batch, {e.job_id for e in events if e.job_id})
        self._load_balances(batch, {e.account_id for e in events if e.type.startswith("credits.")})

    def _load_jobs(self, batch: _Batch, job_ids: set[str]) -> None:
        wanted = sorted(job_ids - batch.jobs.keys())
        if not wanted:
            return
        # Locked until the batch commits (PostgreSQL; on SQLite the writer holds the database):
        # a cancel on another connection or replica waits for the batch, then reads what it
        # made, and the batch never writes over a change it did not see.
        found = {
            row.id: job_from_row(row)
            for row in batch.unit.connection.execute(_JOBS_FOR_UPDATE, {"ids": wanted})
        }
        for job_id in wanted:
            job = found.get(job_id)
            batch.jobs[job_id] = job
            if job is not None:
                batch.seen[job_id] = _changes(job)

    def _load_balances(self, batch: _Batch, accounts: set[str]) -> None:
        wanted = sorted(accounts - batch.balances.keys())
        if not wanted:
            return
        rows = batch.unit.connection.execute(_BALANCES, {"accounts": wanted})
        found = {
            r.account_id: Announced(
                r.available_millicredits, r.reserved_millicredits, _aware(r.as_of), r.version
            )
            for r in rows
        }
        for account in wanted:
            batch.balances[account] = found.get(account)

    def after_batch(self, unit: Unit) -> None:
        batch = self._for(unit)
        changed = [
            job
            for job_id, job in batch.jobs.items()
            if job is not None and _changes(job) != batch.seen.get(job_id)
        ]
        if changed:
            unit.connection.execute(
                _UPDATE_JOB,
                [
                    {"key_id": job.id, **{f"v_{n}": getattr(job, n) for n in JOB_CHANGES}}
                    for job in changed
                ],
            )
        if batch.feed:
            unit.connection.execute(_INSERT_EVENTS, batch.feed)
        record_attempts(unit.connection, batch.attempts)
        self._write_balances(unit.connection, batch)
        notify = self.notify
        if notify is not None and changed:

            def wake() -> None:
                for job in changed:
                    notify(job.id, job)

            unit.after_commit(wake)
        self._batch = None

    def _write_balances(self, connection: Connection, batch: _Batch) -> None:
        for account, announced in batch.balance_changes.items():
            values = {
                "account": account,
                "available": announced.available,
                "reserved": announced.reserved,
                "as_of": announced.as_of,
                "version": announced.version,
            }
            known = batch.balances.get(account) is not None
            connection.execute(_UPDATE_BALANCE if known else _INSERT_BALANCE, values)

    def _feed_entry(self, batch: _Batch, job: Job, event_type: str, occurred: datetime) -> None:
        batch.feed.append(
            {
                "account_id": job.account_id,
                "job_id": job.id,
                "type": event_type,
                "sandbox": job.sandbox,
                "occurred_at": occurred,
                "data": job_summary(job),
            }
        )

    # --- jobs and balances --------------------------------------------------------------------

    def _record_balance(
        self, batch: _Batch, account_id: str, balance: common_pb2.Balance, as_of: datetime
    ) -> None:
        if account_id not in batch.balances:
            self._load_balances(batch, {account_id})
        new = Announced(
            balance.available_millicredits, balance.reserved_millicredits, as_of, balance.version
        )
        kept = batch.balance_changes.get(account_id) or batch.balances.get(account_id)
        if kept is not None and not supersedes(new, kept):
            return  # an older announcement arriving late
        batch.balance_changes[account_id] = new

    def handle_job_event(self, unit: Unit, event: Event) -> None:
        batch = self._for(unit)
        occurred = event.envelope.occurred_at.ToDatetime(tzinfo=UTC)
        message = event.message
        balance = getattr(message, "balance", None)
        if isinstance(balance, common_pb2.Balance) and event.type.startswith("credits."):
            self._record_balance(batch, event.account_id, balance, occurred)
        if isinstance(message, credits_pb2.CreditsApplied):
            grants = cast(Table, Grant.__table__)
            unit.connection.execute(
                update(grants)
                .where(grants.c.id == message.grant_id)
                .values(booked_millicredits=message.amount_millicredits)
            )
            notify = self.notify
            if notify is not None:
                grant_id = message.grant_id
                unit.after_commit(lambda: notify(grant_id, None))
            return
        if not event.job_id:
            return
        if event.job_id not in batch.jobs:
            self._load_jobs(batch, {event.job_id})
        job = batch.jobs.get(event.job_id)
        if job is None or job.account_id != event.account_id:
            return
        before = (job.status, job.progress, job.queue_position, job.queue_reason)
        target = next_status(job.status, event.type)
        if target is not None:
            job.status = target
        apply_job_event(job, message, target, occurred)
        after = (job.status, job.progress, job.queue_position, job.queue_reason)
        if after != before or event.type in LEDGER_EVENTS:
            self._feed_entry(batch, job, event.type, occurred)

    # --- the webhook delivery log (issue 6): built from the notifier's events -----------------

    def handle_webhook_attempted(self, unit: Unit, event: Event) -> None:
        """One attempt that a retry follows: its row in the log, and the delivery's state."""
        message = event.message
        if not isinstance(message, webhooks_pb2.WebhookAttempted):
            return
        occurred = event.envelope.occurred_at.ToDatetime(tzinfo=UTC)
        self._for(unit).attempts.append(
            (
                event.account_id,
                Attempt(
                    delivery_id=message.delivery_id,
                    webhook_id=message.webhook_id,
                    endpoint_id=message.endpoint_id,
                    url=message.url,
                    event_type=message.event_type,
                    job_id=message.job_id,
                    number=message.attempt,
                    attempted_at=_when(message.attempted_at, occurred),
                    status_code=message.status_code or None,
                    latency_ms=message.latency_ms,
                    error=message.error or None,
                    outcome=message.outcome,
                    next_attempt_at=(
                        message.next_attempt_at.ToDatetime(tzinfo=UTC)
                        if message.HasField("next_attempt_at")
                        else None
                    ),
                ),
            )
        )

    def handle_webhook_finished(self, unit: Unit, event: Event) -> None:
        """webhook.delivered / webhook.failed: the final attempt (carried in the event) and the
        delivery's final status."""
        message = event.message
        if not isinstance(message, webhooks_pb2.WebhookDelivered | webhooks_pb2.WebhookFailed):
            return
        occurred = event.envelope.occurred_at.ToDatetime(tzinfo=UTC)
        delivered = isinstance(message, webhooks_pb2.WebhookDelivered)
        number = message.attempt if delivered else message.attempts  # type: ignore[union-attr]
        if message.HasField("final_attempt"):
            final = message.final_attempt
            self._for(unit).attempts.append(
                (
                    event.account_id,
                    Attempt(
                        delivery_id=message.delivery_id,
                        webhook_id=message.webhook_id,
                        endpoint_id=message.endpoint_id,
                        url=message.url,
                        event_type=message.event_type,
                        job_id=final.job_id or event.job_id,
                        number=number,
                        attempted_at=_when(final.attempted_at, occurred),
                        status_code=final.status_code or None,
                        latency_ms=final.latency_ms,
                        error=final.error or None,
                        outcome="delivered" if delivered else "failed",
                        next_attempt_at=None,
                    ),
                )
            )
            return
        # An event of an older notifier, which told the attempt in webhook.attempted: the
        # attempts this batch logged so far go first.
        batch = self._for(unit)
        record_attempts(unit.connection, batch.attempts)
        batch.attempts.clear()
        row = unit.connection.execute(
            select(deliveries_table.c.account_id, deliveries_table.c.attempts).where(
                deliveries_table.c.id == message.delivery_id
            )
        ).first()
        if row is None or row.account_id != event.account_id or number < row.attempts:
            return
        unit.connection.execute(
            update(deliveries_table)
            .where(deliveries_table.c.id == message.delivery_id)
            .values(status="delivered" if delivered else "failed", next_attempt_at=None)
        )


def apply_job_event(job: Job, message: Any, target: str | None, occurred: datetime) -> None:
    """What one pipeline event changes of a job beyond its status (`target`, when it moved)."""
    if isinstance(message, credits_pb2.CreditsReserved):
        job.cost_millicredits = message.amount_millicredits
    elif isinstance(message, credits_pb2.CreditsRejected):
        if target == "failed":
            job.cost_millicredits = 0
            job.error_code = "INSUFFICIENT_CREDITS"
            job.error_message = "Not enough credits for this job."
            job.completed_at = occurred
    elif isinstance(message, jobs_pb2.JobQueued):
        if job.status == "queued":
            job.queue_position = message.queue_position
            job.queue_reason = message.queue_reason or None
            job.estimated_start_at = (
                _when(message.estimated_start_at, occurred)
                if message.HasField("estimated_start_at")
                else None
            )
    elif isinstance(message, jobs_pb2.JobStarted):
        if target == "running":
            job.started_at = _when(message.started_at, occurred)
            job.queue_position = None
    elif isinstance(message, jobs_pb2.JobProgress):
        if job.status == "running":
            job.progress = max(job.progress, min(max(message.progress, 0.0), 1.0))
    elif isinstance(message, jobs_pb2.JobCompleted):
        if target == "completed":
            result = message.result
            job.started_at = job.started_at or _when(message.started_at, occurred)
            job.completed_at = _when(message.completed_at, occurred)
            job.progress = 1.0
            job.queue_position = None
            job.cost_millicredits = message.price_millicredits
            job.result = {
                "blob_key": result.blob_key,
                "content_type": result.content_type,
                "size_bytes": result.size_bytes,
                "encryption": {
                    "scheme": result.encryption.scheme,
                    "key_id": result.encryption.key_id,
                    "salt": _b64(result.encryption.salt),
                    "sealed_key": _b64(result.encryption.sealed_key),
                    "chunk_size": result.encryption.chunk_size,
                },
            }
    elif isinstance(message, jobs_pb2.JobFailed):
        if target == "failed":
            job.completed_at = _when(message.failed_at, occurred)
            job.cost_millicredits = 0
            job.queue_position = None
            job.error_code = message.error_code or "INFERENCE_ERROR"
            job.error_message = message.error_message
    elif isinstance(message, jobs_pb2.JobCanceled) and target == "canceled":
        job.completed_at = _when(message.canceled_at, occurred)
        job.cost_millicredits = 0
        job.queue_position = None


@dataclass(frozen=True)
class Attempt:
    """One attempt of a webhook delivery, as the delivery log records it."""

    delivery_id: str
    webhook_id: str
    endpoint_id: str
    url: str
    event_type: str
    job_id: str
    number: int
    attempted_at: datetime
    status_code: int | None
    latency_ms: int
    error: str | None
    outcome: str  # retrying | delivered | failed
    next_attempt_at: datetime | None


_INSERT_DELIVERY = insert(deliveries_table)
_INSERT_ATTEMPT = insert(attempts_table)
_UPDATE_DELIVERY = (
    update(deliveries_table)
    .where(deliveries_table.c.id == bindparam("key_id"))
    .values(
        attempts=bindparam("v_attempts"),
        status=bindparam("v_status"),
        last_status_code=bindparam("v_last_status_code"),
        last_error=bindparam("v_last_error"),
        next_attempt_at=bindparam("v_next_attempt_at"),
        updated_at=bindparam("v_updated_at"),
    )
)


def record_attempt(connection: Connection, *, account_id: str, attempt: Attempt) -> None:
    """One attempt's row in the log and its delivery's state (record_attempts of one)."""
    record_attempts(connection, [(account_id, attempt)])


def record_attempts(connection: Connection, attempts: Sequence[tuple[str, Attempt]]) -> None:
    """The attempts' rows in the log and their deliveries' current state, in arrival order,
    with a fixed number of statements however many there are: the deliveries and attempts
    they name are read once, then new rows inserted and changed deliveries updated together.
    An attempt already logged (a redelivered event) or of another account's delivery changes
    nothing. A 410 that ended a delivery to an account endpoint marks the endpoint disabled
    (an update re-enables it)."""
    if not attempts:
        return
    ids = sorted({a.delivery_id for _account, a in attempts})
    known: dict[str, dict[str, Any]] = {
        row.id: {"account_id": row.account_id, "attempts": row.attempts}
        for row in connection.execute(_DELIVERY_STATES, {"ids": ids})
    }
    logged = {
        (row.delivery_id, row.attempt) for row in connection.execute(_LOGGED_ATTEMPTS, {"ids": ids})
    }
    new_deliveries: dict[str, dict[str, Any]] = {}
    changed: dict[str, dict[str, Any]] = {}
    new_attempts: list[dict[str, Any]] = []
    gone: list[tuple[str, Attempt]] = []
    for account_id, attempt in attempts:
        delivery = known.get(attempt.delivery_id)
        if delivery is None:
            delivery = {"account_id": account_id, "attempts": 0}
            known[attempt.delivery_id] = delivery
            new_deliveries[attempt.delivery_id] = {
                "id": attempt.delivery_id,
                "account_id": account_id,
                "webhook_id": attempt.webhook_id,
                "endpoint_id": attempt.endpoint_id,
                "url": attempt.url,
                "event_type": attempt.event_type,
                "job_id": attempt.job_id,
                "status": attempt.outcome,
                "attempts": 0,
                "last_status_code": None,
                "last_error": None,
                "next_attempt_at": None,
                "created_at": attempt.attempted_at,
                "updated_at": attempt.attempted_at,
            }
        elif delivery["account_id"] != account_id:
            continue
        if (attempt.delivery_id, attempt.number) in logged:
            continue
        logged.add((attempt.delivery_id, attempt.number))
        new_attempts.append(
            {
                "delivery_id": attempt.delivery_id,
                "account_id": account_id,
                "attempt": attempt.number,
                "attempted_at": attempt.attempted_at,
                "status_code": attempt.status_code,
                "latency_ms": attempt.latency_ms,
                "error": attempt.error,
                "outcome": attempt.outcome,
                "next_attempt_at": attempt.next_attempt_at,
            }
        )
        if attempt.number >= delivery["attempts"]:
            delivery["attempts"] = attempt.number
            state = {
                "attempts": attempt.number,
                "status": attempt.outcome,
                "last_status_code": attempt.status_code,
                "last_error": attempt.error,
                "next_attempt_at": attempt.next_attempt_at,
                "updated_at": attempt.attempted_at,
            }
            if attempt.delivery_id in new_deliveries:
                new_deliveries[attempt.delivery_id].update(state)
            else:
                changed[attempt.delivery_id] = state
        if attempt.status_code == 410 and attempt.outcome == "failed" and attempt.endpoint_id:
            gone.append((account_id, attempt))
    if new_deliveries:
        connection.execute(_INSERT_DELIVERY, list(new_deliveries.values()))
    if new_attempts:
        connection.execute(_INSERT_ATTEMPT, new_attempts)
    if changed:
        connection.execute(
            _UPDATE_DELIVERY,
            [
                {"key_id": key, **{f"v_{name}": value for name, value in state.items()}}
                for key, state in changed.items()
            ],
        )
    for account_id, attempt in gone:
        disable_gone_endpoint(connection, account_id, attempt)


def disable_gone_endpoint(connection: Connection, account_id: str, attempt: Attempt) -> None:
    endpoints = cast(Table, WebhookEndpoint.__table__)
    endpoint = connection.execute(
        select(endpoints.c.account_id, endpoints.c.disabled_at, endpoints.c.updated_at)
        .where(endpoints.c.id == attempt.endpoint_id)
        .with_for_update()  # an update of the endpoint (which re-enables it) waits, or wins
    ).first()
    if (
        endpoint is not None
        and endpoint.account_id == account_id
        and endpoint.disabled_at is None
        and (_aware(endpoint.updated_at) or attempt.attempted_at) <= attempt.attempted_at
    ):
        # The revision moves too: a change read before this disable (SQLite has no row lock)
        # then fails its version check and is made again on the disabled row, instead of
        # announcing "enabled" over a row that stays disabled.
        connection.execute(
            update(endpoints)
            .where(endpoints.c.id == attempt.endpoint_id)
            .values(disabled_at=attempt.attempted_at, revision=endpoints.c.revision + 1)
        )


def make_handlers(notify: Notify | None = None) -> EventHandlers:
    return ReadModel(notify).handlers()
