"""The scheduler's event handlers."""

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.ext.asyncio import AsyncSession

from kiln_contracts import Event
from kiln_contracts.v1 import common_pb2, credits_pb2, jobs_pb2
from kiln_runtime.catalog import Catalog
from kiln_runtime.consuming import Handler
from kiln_runtime.messaging import utcnow
from kiln_runtime.outbox import Outbox
from kiln_scheduler import repository
from kiln_scheduler.metrics import DISPATCHED, IN_FLIGHT, QUEUE_DEPTH
from kiln_scheduler.models import QueuedJob
from kiln_scheduler.service import choose_dispatches, queue_position


def _now_ts() -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(datetime.now(UTC))
    return ts


def make_handlers(catalog: Catalog, capacity_overrides: dict[str, int]) -> dict[str, Handler]:
    def capacity(pool: str) -> int:
        if pool in capacity_overrides:
            return capacity_overrides[pool]
        entry = catalog.pools.get(pool)
        return entry.capacity if entry is not None else 1

    async def dispatch_ready(session: AsyncSession, pool: str, outbox: Outbox) -> None:
        waiting = await repository.waiting_in_pool(session, pool)
        busy = await repository.in_flight(session, pool)
        chosen = choose_dispatches(waiting, busy, capacity(pool))
        now = utcnow()
        for row in await repository.jobs_by_id(session, chosen):
            row.status = "dispatched"
            row.attempt += 1
            row.dispatched_at = now
            spec = common_pb2.JobSpec()
            spec.ParseFromString(row.spec)
            outbox.emit(
                "job.dispatched",
                jobs_pb2.JobDispatched(
                    spec=spec, price_millicredits=row.price_millicredits, attempt=row.attempt
                ),
                account_id=row.account_id,
                job_id=row.job_id,
            )
            DISPATCHED.labels(pool).inc()
        QUEUE_DEPTH.labels(pool).set(len(waiting) - len(chosen))
        IN_FLIGHT.labels(pool).set(busy + len(chosen))

    async def on_credits_reserved(session: AsyncSession, event: Event, outbox: Outbox) -> None:
        reserved = event.message
        assert isinstance(reserved, credits_pb2.CreditsReserved)
        existing = await repository.job(session, event.job_id)
        if existing is not None and existing.status == "cancel_requested":
            existing.pool = reserved.spec.pool
            existing.spec = reserved.spec.SerializeToString(deterministic=True)
            existing.price_millicredits = reserved.amount_millicredits
            cancel(existing, outbox)
            return
        if existing is not None:
            return
        pool = reserved.spec.pool
        session.add(
            QueuedJob(
                job_id=event.job_id,
                account_id=event.account_id,
                pool=pool,
                spec=reserved.spec.SerializeToString(deterministic=True),
                price_millicredits=reserved.amount_millicredits,
                status="queued",
                attempt=0,
            )
        )
        await session.flush()
        waiting = await repository.waiting_in_pool(session, pool)
        outbox.emit(
            "job.queued",
            jobs_pb2.JobQueued(
                queue_position=queue_position(waiting, event.job_id),
                queue_reason="capacity",
            ),
            account_id=event.account_id,
            job_id=event.job_id,
        )
        await dispatch_ready(session, pool, outbox)

    async def on_cancel_requested(session: AsyncSession, event: Event, outbox: Outbox) -> None:
        """A queued job is canceled at once. A dispatched one runs on until the worker confirms
        it stopped (issue 5); a job not yet reserved is canceled when its reservation arrives."""
        row = await repository.job(session, event.job_id)
        if row is None:
            session.add(
                QueuedJob(
                    job_id=event.job_id,
                    account_id=event.account_id,
                    pool="",
                    spec=b"",
                    price_millicredits=0,
                    status="cancel_requested",
                    attempt=0,
                )
            )
            return
        if row.status == "queued":
            cancel(row, outbox)
            await session.flush()
            await dispatch_ready(session, row.pool, outbox)

    def cancel(row: QueuedJob, outbox: Outbox) -> None:
        row.status = "finished"
        row.finished_at = utcnow()
        spec = common_pb2.JobSpec()
        spec.ParseFromString(row.spec)
        outbox.emit(
            "job.canceled",
            jobs_pb2.JobCanceled(
                spec=spec, price_millicredits=row.price_millicredits, canceled_at=_now_ts()
            ),
            account_id=row.account_id,
            job_id=row.job_id,
        )

    async def on_job_started(session: AsyncSession, event: Event, outbox: Outbox) -> None:
        row = await repository.job(session, event.job_id)
        if row is not None and row.status == "dispatched":
            row.status = "running"

    async def on_job_finished(session: AsyncSession, event: Event, outbox: Outbox) -> None:
        row = await repository.job(session, event.job_id)
        if row is None or row.status == "finished":
            return
        row.status = "finished"
        row.finished_at = utcnow()
        await session.flush()
        await dispatch_ready(session, row.pool, outbox)

    return {
        "credits.reserved": on_credits_reserved,
        "job.cancel_requested": on_cancel_requested,
        "job.started": on_job_started,
        "job.completed": on_job_finished,
        "job.failed": on_job_finished,
    }
