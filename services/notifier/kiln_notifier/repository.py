"""All of the notifier's SQL. Callers own the transaction; these functions only execute."""

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from kiln_notifier.models import JOB_WEBHOOK_URL, PENDING, NotifierTables
from kiln_notifier.service import DeliveryTarget, EndpointRecord


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything stored here is UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# ---------------------------------------------------------------------------------------------
# Endpoints


@dataclass(frozen=True)
class EndpointChange:
    endpoint_id: str
    account_id: str
    url: str
    secret: str
    event_types: list[str]
    is_default: bool
    deleted: bool
    changed_at: datetime


async def upsert_endpoint(
    session: AsyncSession, tables: NotifierTables, change: EndpointChange
) -> None:
    endpoints = tables.endpoints
    values: dict[str, Any] = {
        "account_id": change.account_id,
        "url": change.url,
        "event_types": list(change.event_types),
        "is_default": change.is_default,
        "deleted": change.deleted,
        "changed_at": change.changed_at,
    }
    existing = await session.scalar(
        select(endpoints.c.endpoint_id).where(endpoints.c.endpoint_id == change.endpoint_id)
    )
    if existing is None:
        await session.execute(
            insert(endpoints).values(endpoint_id=change.endpoint_id, secret=change.secret, **values)
        )
        return
    # A deletion (or a change that does not rotate it) may come without the secret: keep ours.
    if change.secret:
        values["secret"] = change.secret
    await session.execute(
        update(endpoints).where(endpoints.c.endpoint_id == change.endpoint_id).values(**values)
    )


async def account_endpoints(
    session: AsyncSession, tables: NotifierTables, account_id: str
) -> list[EndpointRecord]:
    endpoints = tables.endpoints
    rows = (
        await session.execute(
            select(
                endpoints.c.endpoint_id,
                endpoints.c.url,
                endpoints.c.event_types,
                endpoints.c.is_default,
                endpoints.c.deleted,
            ).where(endpoints.c.account_id == account_id, endpoints.c.deleted.is_(False))
        )
    ).all()
    return [
        EndpointRecord(
            endpoint_id=row.endpoint_id,
            url=row.url,
            event_types=tuple(row.event_types or ()),
            is_default=row.is_default,
            deleted=row.deleted,
        )
        for row in rows
    ]


@dataclass(frozen=True)
class SecretLookup:
    secret: str | None
    endpoint_gone: bool = False  # the endpoint was deleted: its deliveries stop


async def signing_secret(
    session: AsyncSession, tables: NotifierTables, *, account_id: str, endpoint_id: str
) -> SecretLookup:
    """The secret a delivery is signed with now: its endpoint's, or for a job's own
    webhook_url the account's newest default secret (None while the account has none)."""
    endpoints = tables.endpoints
    if endpoint_id == JOB_WEBHOOK_URL:
        secret = await session.scalar(
            select(endpoints.c.secret)
            .where(
                endpoints.c.account_id == account_id,
                endpoints.c.is_default.is_(True),
                endpoints.c.deleted.is_(False),
            )
            .order_by(endpoints.c.changed_at.desc())
            .limit(1)
        )
        return SecretLookup(secret=secret or None)
    row = (
        await session.execute(
            select(endpoints.c.secret, endpoints.c.deleted).where(
                endpoints.c.endpoint_id == endpoint_id, endpoints.c.account_id == account_id
            )
        )
    ).first()
    if row is None or row.deleted:
        return SecretLookup(secret=None, endpoint_gone=True)
    return SecretLookup(secret=row.secret or None)


# ---------------------------------------------------------------------------------------------
# Deliveries


async def add_deliveries(
    session: AsyncSession,
    tables: NotifierTables,
    *,
    webhook_id: str,
    account_id: str,
    job_id: str,
    event_type: str,
    payload: str,
    targets: Sequence[DeliveryTarget],
    trace_id: str,
    now: datetime,
) -> list[str]:
    """Insert one pending delivery, due now, per target not already recorded for this message.
    Returns the new delivery ids."""
    deliveries = tables.deliveries
    known = set(
        (
            await session.scalars(
                select(deliveries.c.endpoint_id).where(deliveries.c.webhook_id == webhook_id)
            )
        ).all()
    )
    rows: list[dict[str, Any]] = [
        {
            "id": str(uuid.uuid4()),
            "webhook_id": webhook_id,
            "account_id": account_id,
            "job_id": job_id,
            "endpoint_id": target.endpoint_id,
            "url": target.url,
            "event_type": event_type,
            "payload": payload,
            "status": PENDING,
            "attempts": 0,
            "next_attempt_at": now,
            "trace_id": trace_id,
            "created_at": now,
        }
        for target in targets
        if target.endpoint_id not in known
    ]
    if rows:
        await session.execute(insert(deliveries), rows)
    return [str(row["id"]) for row in rows]


@dataclass(frozen=True)
class ClaimedDelivery:
    id: str
    webhook_id: str
    account_id: str
    job_id: str
    endpoint_id: str
    url: str
    event_type: str
    payload: str
    attempts: int  # attempts made before this one
    trace_id: str

    @property
    def attempt(self) -> int:
        """The number of the attempt about to be made (1 for the first)."""
        return self.attempts + 1


async def claim_due_deliveries(
    session: AsyncSession, tables: NotifierTables, *, now: datetime, lease: timedelta, limit: int
) -> list[ClaimedDelivery]:
    """Take up to `limit` due pending deliveries by pushing their next_attempt_at past the
    lease. Another sender (another replica) cannot take the same row: the conditional update
    only matches while the row is still due. If this process dies before it records the
    outcome, the lease runs out and the delivery is due again (at least once, same webhook-id).
    """
    deliveries = tables.deliveries
    query = (
        select(deliveries)
        .where(deliveries.c.status == PENDING, deliveries.c.next_attempt_at <= now)
        .order_by(deliveries.c.next_attempt_at)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    rows = (await session.execute(query)).all()
    claimed: list[ClaimedDelivery] = []
    for row in rows:
        result = await session.execute(
            update(deliveries)
            .where(
                and_(
                    deliveries.c.id == row.id,
                    deliveries.c.status == PENDING,
                    deliveries.c.next_attempt_at <= now,
                )
            )
            .values(next_attempt_at=now + lease)
        )
        if getattr(result, "rowcount", 0) != 1:
            continue
        claimed.append(
            ClaimedDelivery(
                id=row.id,
                webhook_id=row.webhook_id,
                account_id=row.account_id,
                job_id=row.job_id,
                endpoint_id=row.endpoint_id,
                url=row.url,
                event_type=row.event_type,
                payload=row.payload,
                attempts=row.attempts,
                trace_id=row.trace_id,
            )
        )
    return claimed


async def record_attempt(
    session: AsyncSession,
    tables: NotifierTables,
    claim: ClaimedDelivery,
    *,
    attempted_at: datetime,
    status_code: int | None,
    latency_ms: int,
    error: str | None,
    new_status: str,
    next_attempt_at: datetime | None,
) -> bool:
    """Log the attempt and move the delivery on. False (and nothing written) when the outcome
    of this attempt was already recorded by someone else (a lease that ran out mid-send)."""
    deliveries = tables.deliveries
    result = await session.execute(
        update(deliveries)
        .where(
            deliveries.c.id == claim.id,
            deliveries.c.status == PENDING,
            deliveries.c.attempts == claim.attempts,
        )
        .values(
            attempts=claim.attempt,
            status=new_status,
            next_attempt_at=next_attempt_at,
            last_status_code=status_code,
            last_error=error,
            finished_at=None if new_status == PENDING else attempted_at,
        )
    )
    if getattr(result, "rowcount", 0) != 1:
        return False
    await session.execute(
        insert(tables.delivery_attempts).values(
            delivery_id=claim.id,
            attempt=claim.attempt,
            attempted_at=attempted_at,
            status_code=status_code,
            latency_ms=latency_ms,
            error=error,
        )
    )
    return True
