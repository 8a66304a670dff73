from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from kiln_scheduler.models import QueuedJob
from kiln_scheduler.service import ACTIVE_STATUSES, Waiting


async def job(session: AsyncSession, job_id: str) -> QueuedJob | None:
    return await session.scalar(select(QueuedJob).where(QueuedJob.job_id == job_id))


async def waiting_in_pool(session: AsyncSession, pool: str) -> list[Waiting]:
    rows = await session.execute(
        select(QueuedJob.job_id, QueuedJob.account_id, QueuedJob.seq).where(
            QueuedJob.pool == pool, QueuedJob.status == "queued"
        )
    )
    return [Waiting(job_id=r.job_id, account_id=r.account_id, seq=r.seq) for r in rows]


async def in_flight(session: AsyncSession, pool: str) -> int:
    count = await session.scalar(
        select(func.count())
        .select_from(QueuedJob)
        .where(QueuedJob.pool == pool, QueuedJob.status.in_(ACTIVE_STATUSES))
    )
    return int(count or 0)


async def jobs_by_id(session: AsyncSession, job_ids: list[str]) -> list[QueuedJob]:
    if not job_ids:
        return []
    rows = await session.scalars(select(QueuedJob).where(QueuedJob.job_id.in_(job_ids)))
    by_id = {r.job_id: r for r in rows}
    return [by_id[j] for j in job_ids]
