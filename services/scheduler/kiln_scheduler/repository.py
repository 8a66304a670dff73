"""All of the scheduler's SQL."""

from datetime import UTC, datetime

from sqlalchemy import and_, func, insert, inspect, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from kiln_scheduler.models import Base, PoolStats, QueuedJob
from kiln_scheduler.service import ACTIVE_STATUSES, Waiting

LOCK_ROW = "*"


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every one the scheduler stores is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


async def migrate(engine: AsyncEngine) -> None:
    """Make the missing tables, then add the columns a table made by an older version lacks
    (every column added since is nullable)."""
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)

        def missing_columns(sync_conn: object) -> list[str]:
            present = {c["name"] for c in inspect(sync_conn).get_columns("queued_jobs")}
            return [c.name for c in QueuedJob.__table__.columns if c.name not in present]

        dialect = conn.dialect
        for name in await conn.run_sync(missing_columns):
            column = QueuedJob.__table__.columns[name]
            sql_type = column.type.compile(dialect=dialect)
            await conn.execute(text(f"ALTER TABLE queued_jobs ADD COLUMN {name} {sql_type}"))
        # The lock row exists before any transaction needs it (see `lock`).
        found = await conn.scalar(select(PoolStats.pool).where(PoolStats.pool == LOCK_ROW))
        if found is None:
            await conn.execute(insert(PoolStats).values(pool=LOCK_ROW, samples=0))


async def lock(session: AsyncSession) -> None:
    """Take the scheduler's write lock for this transaction: the timer and the event handlers
    both decide over whole pools, so they run one at a time. A write first: on SQLite it takes
    the database's write lock before anything is read; on PostgreSQL it locks one row."""
    result = await session.execute(
        update(PoolStats).where(PoolStats.pool == LOCK_ROW).values(samples=PoolStats.samples + 1)
    )
    if getattr(result, "rowcount", 1) == 0:
        session.add(PoolStats(pool=LOCK_ROW, mean_duration_s=None, samples=0))
        await session.flush()


async def job(session: AsyncSession, job_id: str) -> QueuedJob | None:
    return await session.scalar(select(QueuedJob).where(QueuedJob.job_id == job_id))


async def waiting_in_pool(session: AsyncSession, pool: str) -> list[Waiting]:
    rows = await session.execute(
        select(QueuedJob.job_id, QueuedJob.account_id, QueuedJob.seq, QueuedJob.ready_at).where(
            QueuedJob.pool == pool, QueuedJob.status == "queued"
        )
    )
    return [
        Waiting(job_id=r.job_id, account_id=r.account_id, seq=r.seq, ready_at=aware(r.ready_at))
        for r in rows
    ]


async def in_flight_by_account(session: AsyncSession, pool: str) -> dict[str, int]:
    rows = await session.execute(
        select(QueuedJob.account_id, func.count())
        .where(QueuedJob.pool == pool, QueuedJob.status.in_(ACTIVE_STATUSES))
        .group_by(QueuedJob.account_id)
    )
    return {account_id: int(count) for account_id, count in rows}


async def in_flight(session: AsyncSession, pool: str) -> int:
    return sum((await in_flight_by_account(session, pool)).values())


async def pool_liveness(session: AsyncSession, pool: str) -> tuple[datetime | None, int]:
    """The oldest dispatch of the pool not started yet, and how many of its jobs started."""
    oldest = await session.scalar(
        select(func.min(QueuedJob.dispatched_at)).where(
            QueuedJob.pool == pool,
            QueuedJob.status.in_(ACTIVE_STATUSES),
            QueuedJob.started_at.is_(None),
        )
    )
    started = await session.scalar(
        select(func.count())
        .select_from(QueuedJob)
        .where(
            QueuedJob.pool == pool,
            QueuedJob.status.in_(ACTIVE_STATUSES),
            QueuedJob.started_at.is_not(None),
        )
    )
    return aware(oldest), int(started or 0)


async def jobs_by_id(session: AsyncSession, job_ids: list[str]) -> list[QueuedJob]:
    if not job_ids:
        return []
    rows = await session.scalars(select(QueuedJob).where(QueuedJob.job_id.in_(job_ids)))
    by_id = {r.job_id: r for r in rows}
    return [by_id[j] for j in job_ids]


async def due_for_timer(session: AsyncSession, now: datetime) -> list[QueuedJob]:
    """The jobs the timer must look at: every job handed to a worker (deadline, liveness) and
    the waiting ones past their deadline. Waiting jobs within their deadline are not loaded."""
    rows = await session.scalars(
        select(QueuedJob).where(
            or_(
                QueuedJob.status.in_(ACTIVE_STATUSES),
                and_(QueuedJob.status == "queued", QueuedJob.deadline_at <= now),
            )
        )
    )
    return list(rows)


async def pools_with_waiting(session: AsyncSession) -> list[str]:
    rows = await session.scalars(
        select(QueuedJob.pool).where(QueuedJob.status == "queued").distinct()
    )
    return list(rows)


async def mean_duration(session: AsyncSession, pool: str) -> float | None:
    row = await session.get(PoolStats, pool)
    return row.mean_duration_s if row is not None else None


async def record_duration(session: AsyncSession, pool: str, mean: float) -> None:
    row = await session.get(PoolStats, pool)
    if row is None:
        session.add(PoolStats(pool=pool, mean_duration_s=mean, samples=1))
    else:
        row.mean_duration_s = mean
        row.samples += 1


async def queue_stats(session: AsyncSession) -> list[tuple[str, int, datetime | None]]:
    """Per pool: how many jobs wait and when the oldest was enqueued."""
    rows = await session.execute(
        select(QueuedJob.pool, func.count(), func.min(QueuedJob.enqueued_at))
        .where(QueuedJob.status == "queued")
        .group_by(QueuedJob.pool)
    )
    return [(pool, int(n), aware(oldest)) for pool, n, oldest in rows]
