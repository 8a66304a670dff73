"""All of the notifier's SQL. Callers own the transaction; these functions only execute."""

import dataclasses
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Insert,
    Select,
    Update,
    and_,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)

from kiln_notifier.deliveries import DeliveryTarget, EndpointRecord
from kiln_notifier.tables import JOB_WEBHOOK_URL, PENDING, NotifierTables
from kiln_runtime.db import upsert_insert


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything stored here is UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# ---------------------------------------------------------------------------------------------
# The statements of every job's path, built once per set of tables: building a statement
# costs more CPU than SQLite's running it, and each job runs six of them.


@dataclass(frozen=True)
class _Statements:
    account_endpoints: Select[Any]
    accounts_endpoints: Select[Any]
    default_secret: Select[Any]
    endpoint_secret: Select[Any]
    endpoint_disabled: Select[Any]
    # per dialect: skips a row the unique constraints already hold, and names the rows it added
    add_deliveries: dict[str, Insert]
    record_outcome: Update
    record_attempt: Insert


_statements: dict[int, tuple[NotifierTables, _Statements]] = {}


def _built(tables: NotifierTables) -> _Statements:
    cached = _statements.get(id(tables))
    if cached is not None and cached[0] is tables:
        return cached[1]
    endpoints, deliveries = tables.endpoints, tables.deliveries
    disabled = tables.disabled_endpoints
    live_endpoints = select(
        endpoints.c.account_id,
        endpoints.c.endpoint_id,
        endpoints.c.url,
        endpoints.c.event_types,
        endpoints.c.is_default,
        endpoints.c.deleted,
    ).where(
        endpoints.c.deleted.is_(False),
        endpoints.c.endpoint_id.not_in(select(disabled.c.endpoint_id)),
    )
    made = _Statements(
        account_endpoints=live_endpoints.where(endpoints.c.account_id == bindparam("account_id")),
        accounts_endpoints=live_endpoints.where(
            endpoints.c.account_id.in_(bindparam("account_ids", expanding=True))
        ),
        default_secret=select(endpoints.c.sealed_secret, endpoints.c.secret)
        .where(
            endpoints.c.account_id == bindparam("account_id"),
            endpoints.c.is_default.is_(True),
            endpoints.c.deleted.is_(False),
        )
        .order_by(endpoints.c.changed_at.desc())
        .limit(1),
        endpoint_secret=select(
            endpoints.c.sealed_secret, endpoints.c.secret, endpoints.c.deleted
        ).where(
            endpoints.c.endpoint_id == bindparam("endpoint_id"),
            endpoints.c.account_id == bindparam("account_id"),
        ),
        endpoint_disabled=select(disabled.c.endpoint_id).where(
            disabled.c.endpoint_id == bindparam("endpoint_id")
        ),
        add_deliveries={
            dialect: upsert_insert(dialect)(deliveries)
            .on_conflict_do_nothing()
            .returning(deliveries.c.id)
            for dialect in ("sqlite", "postgresql")
        },
        record_outcome=update(deliveries)
        .where(
            deliveries.c.id == bindparam("b_id"),
            deliveries.c.status == PENDING,
            deliveries.c.attempts == bindparam("b_attempts"),
        )
        .values(
            attempts=bindparam("v_attempts"),
            status=bindparam("v_status"),
            next_attempt_at=bindparam("v_next_attempt_at"),
            last_status_code=bindparam("v_status_code"),
            last_error=bindparam("v_error"),
            finished_at=bindparam("v_finished_at"),
        ),
        record_attempt=insert(tables.delivery_attempts),
    )
    _statements[id(tables)] = (tables, made)
    return made


# ---------------------------------------------------------------------------------------------
# Endpoints


@dataclass(frozen=True)
class EndpointChange:
    endpoint_id: str
    account_id: str
    url: str
    sealed_secret: str  # "" when the change leaves the secret as it was
    event_types: list[str]
    is_default: bool
    deleted: bool
    changed_at: datetime
    disabled: bool = False
    revision: int = 0  # the gateway's revision of the endpoint; 0 from older gateways


def upsert_endpoint(connection: Connection, tables: NotifierTables, change: EndpointChange) -> bool:
    """Store an endpoint as the change describes it; False (nothing written) when the stored
    copy is of this revision already or of a later one. Each change carries the endpoint's
    whole state and the gateway's revision of it, so the highest revision is all that counts:
    a change arrives again, or after a later one, when it is sent again (`kiln-admin dlq
    replay` of a change that failed here, a group reading its topic again) or when gateway
    replicas' outboxes send in another order; applied, it would bring back a deleted endpoint,
    an old URL, or re-enable an endpoint disabled here after a 410. A change without a
    revision (a gateway of the release before them, during an upgrade) has only its time."""
    endpoints = tables.endpoints
    values: dict[str, Any] = {
        "account_id": change.account_id,
        "url": change.url,
        "event_types": list(change.event_types),
        "is_default": change.is_default,
        "deleted": change.deleted,
        "changed_at": change.changed_at,
    }
    if change.revision:
        values["revision"] = change.revision
    # Insert when new; a row that is there already (or that another member inserted a moment
    # ago, during a rebalance) makes the insert a no-op, and the update below judges it.
    inserted = connection.execute(
        upsert_insert(connection.dialect.name)(endpoints)
        .values(
            endpoint_id=change.endpoint_id,
            sealed_secret=change.sealed_secret or None,
            secret="",
            **values,
        )
        .on_conflict_do_nothing(index_elements=["endpoint_id"])
        .returning(endpoints.c.endpoint_id)  # rowcount is -1 for this insert on psycopg
    ).first()
    if inserted is None:
        # A deletion (or a change that does not rotate it) may come without the secret: keep
        # ours.
        if change.sealed_secret:
            values["sealed_secret"] = change.sealed_secret
            values["secret"] = ""
        statement = update(endpoints).where(endpoints.c.endpoint_id == change.endpoint_id)
        if change.revision:
            # Judged in the statement, on the row as it is when written, so that two members
            # handling changes of one endpoint at once (a rebalance) cannot both win.
            statement = statement.where(endpoints.c.revision < change.revision)
        else:
            statement = statement.where(endpoints.c.changed_at <= change.changed_at)
        if connection.execute(statement.values(**values)).rowcount == 0:
            return False
    if not change.deleted:
        # Any change the gateway announces (an update after a 410) re-enables the endpoint,
        # unless the change is its disabling by the account.
        connection.execute(
            delete(tables.disabled_endpoints).where(
                tables.disabled_endpoints.c.endpoint_id == change.endpoint_id
            )
        )
        if change.disabled and not change.is_default:
            connection.execute(
                insert(tables.disabled_endpoints).values(
                    endpoint_id=change.endpoint_id,
                    account_id=change.account_id,
                    disabled_at=change.changed_at,
                    reason="disabled by the account",
                )
            )
    return True


def set_sealed_secret(
    connection: Connection, tables: NotifierTables, endpoint_id: str, sealed: str
) -> None:
    connection.execute(
        update(tables.endpoints)
        .where(tables.endpoints.c.endpoint_id == endpoint_id)
        .values(sealed_secret=sealed, secret="")
    )


def _endpoint_record(row: Any) -> EndpointRecord:
    return EndpointRecord(
        endpoint_id=row.endpoint_id,
        url=row.url,
        event_types=tuple(row.event_types or ()),
        is_default=row.is_default,
        deleted=row.deleted,
    )


def account_endpoints(
    connection: Connection, tables: NotifierTables, account_id: str
) -> list[EndpointRecord]:
    rows = connection.execute(_built(tables).account_endpoints, {"account_id": account_id}).all()
    return [_endpoint_record(row) for row in rows]


def endpoints_of_accounts(
    connection: Connection, tables: NotifierTables, account_ids: Sequence[str]
) -> dict[str, list[EndpointRecord]]:
    """Each account's live endpoints, in one query for a whole batch of jobs' ends."""
    endpoints: dict[str, list[EndpointRecord]] = {account: [] for account in account_ids}
    if account_ids:
        for row in connection.execute(
            _built(tables).accounts_endpoints, {"account_ids": sorted(set(account_ids))}
        ):
            endpoints[row.account_id].append(_endpoint_record(row))
    return endpoints


@dataclass(frozen=True)
class SecretLookup:
    sealed_secret: str | None = None
    # In clear only when a notifier of the release before sealed secrets stored it (tables.py).
    clear_secret: str | None = None
    endpoint_gone: bool = False  # the endpoint was deleted (or disabled): its deliveries stop
    disabled: bool = False

    @property
    def found(self) -> bool:
        return bool(self.sealed_secret or self.clear_secret)


def _lookup(sealed: str | None, clear: str | None) -> SecretLookup:
    return SecretLookup(
        sealed_secret=sealed or None, clear_secret=None if sealed else clear or None
    )


def signing_secret(
    connection: Connection, tables: NotifierTables, *, account_id: str, endpoint_id: str
) -> SecretLookup:
    """The secret a delivery is signed with now: its endpoint's, or for a job's own
    webhook_url the account's newest default secret (None while the account has none)."""
    statements = _built(tables)
    if endpoint_id == JOB_WEBHOOK_URL:
        newest = connection.execute(statements.default_secret, {"account_id": account_id}).first()
        return SecretLookup() if newest is None else _lookup(newest.sealed_secret, newest.secret)
    row = connection.execute(
        statements.endpoint_secret, {"endpoint_id": endpoint_id, "account_id": account_id}
    ).first()
    if row is None or row.deleted:
        return SecretLookup(endpoint_gone=True)
    disabled = connection.scalar(statements.endpoint_disabled, {"endpoint_id": endpoint_id})
    if disabled is not None:
        return SecretLookup(endpoint_gone=True, disabled=True)
    return _lookup(row.sealed_secret, row.secret)


def disable_endpoint(
    connection: Connection,
    tables: NotifierTables,
    *,
    endpoint_id: str,
    account_id: str,
    reason: str,
    now: datetime,
) -> bool:
    """Stop sending to an endpoint (it answered 410). False when it already was disabled."""
    if endpoint_id == JOB_WEBHOOK_URL:
        return False
    disabled = tables.disabled_endpoints
    if connection.scalar(
        select(disabled.c.endpoint_id).where(disabled.c.endpoint_id == endpoint_id)
    ):
        return False
    connection.execute(
        insert(disabled).values(
            endpoint_id=endpoint_id, account_id=account_id, disabled_at=now, reason=reason
        )
    )
    return True


def endpoint_for_test(
    connection: Connection, tables: NotifierTables, *, account_id: str, endpoint_id: str
) -> str | None:
    """The URL of a live endpoint of `account_id`, or None."""
    endpoints = tables.endpoints
    return connection.scalar(
        select(endpoints.c.url).where(
            endpoints.c.endpoint_id == endpoint_id,
            endpoints.c.account_id == account_id,
            endpoints.c.deleted.is_(False),
            endpoints.c.is_default.is_(False),
        )
    )


# ---------------------------------------------------------------------------------------------
# Deliveries


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
    # Attempts made before the last redelivery request: the retry schedule starts over there.
    attempt_base: int = 0
    created_at: datetime | None = None
    claimed: bool = True  # this process holds its lease (False: it waits to be claimed)
    # The signing secret as the claiming batch left it, for an attempt sent right after that
    # commit (None: the attempt reads it itself, as a retry later must). Not in the repr: a
    # secret from before sealed secrets is in clear.
    secret: SecretLookup | None = field(default=None, repr=False)

    @property
    def schedule_attempt(self) -> int:
        """This attempt's place in the retry schedule (1 for a first try or a redelivery)."""
        return self.attempt - self.attempt_base

    @property
    def attempt(self) -> int:
        """The number of the attempt about to be made (1 for the first)."""
        return self.attempts + 1


def add_deliveries(
    connection: Connection,
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
    claim_until: Callable[[DeliveryTarget], datetime | None] = lambda _t: None,
) -> list[ClaimedDelivery]:
    """Insert one pending delivery per target not already recorded for this message, due now;
    or, for a target `claim_until` gives a time, claimed by this process until then (it sends
    them as soon as the transaction commits). Returns the deliveries added.

    The database says what is recorded already, with no read first: a message's target that
    has its delivery (a redelivered event the inbox no longer remembers) is skipped by
    `uq_deliveries_message_endpoint`, and a job's target that has its terminal webhook (a
    late job.completed after job.failed, here or on another member) by
    `uq_deliveries_job_terminal`; whichever end was recorded first is the one sent."""
    statements = _built(tables)
    rows: list[dict[str, Any]] = []
    claims: list[ClaimedDelivery] = []
    for target in targets:
        delivery_id = f"dlv_{uuid.uuid4().hex}"
        until = claim_until(target)
        rows.append(
            {
                "id": delivery_id,
                "webhook_id": webhook_id,
                "account_id": account_id,
                "job_id": job_id,
                "endpoint_id": target.endpoint_id,
                "url": target.url,
                "event_type": event_type,
                "payload": payload,
                "status": PENDING,
                "attempts": 0,
                "next_attempt_at": until or now,
                "trace_id": trace_id,
                "created_at": now,
            }
        )
        claims.append(
            ClaimedDelivery(
                id=delivery_id,
                webhook_id=webhook_id,
                account_id=account_id,
                job_id=job_id,
                endpoint_id=target.endpoint_id,
                url=target.url,
                event_type=event_type,
                payload=payload,
                attempts=0,
                trace_id=trace_id,
                created_at=now,
                claimed=until is not None,
            )
        )
    if not rows:
        return claims
    # Nothing is sent for a delivery that was not recorded.
    added = set(
        connection.execute(statements.add_deliveries[connection.dialect.name], rows).scalars()
    )
    return claims if len(added) == len(claims) else [c for c in claims if c.id in added]


def claim_due_deliveries(
    connection: Connection,
    tables: NotifierTables,
    *,
    now: datetime,
    lease: timedelta,
    limit: int,
    in_flight_by_url: dict[str, int] | None = None,
    max_per_url: int | None = None,
) -> list[ClaimedDelivery]:
    """Take up to `limit` due pending deliveries by pushing their next_attempt_at past the
    lease. Another sender (another replica) cannot take the same row: the conditional update
    only matches while the row is still due. If this process dies before it records the
    outcome, the lease runs out and the delivery is due again (at least once, same webhook-id).

    Order and isolation: a delivery waits while an older unfinished one of the same job goes to
    the same target (the job's events arrive in order), and no URL gets more than
    `max_per_url` attempts in flight (counting `in_flight_by_url`), so a slow or dead receiver
    holds a few slots and never delays the others.
    """
    deliveries = tables.deliveries
    older = deliveries.alias("older")
    in_flight = dict(in_flight_by_url or {})
    full = [url for url, count in in_flight.items() if max_per_url and count >= max_per_url]
    query = (
        select(deliveries)
        .where(
            deliveries.c.status == PENDING,
            deliveries.c.next_attempt_at <= now,
            ~select(older.c.id)
            .where(
                older.c.status == PENDING,
                older.c.job_id == deliveries.c.job_id,
                older.c.job_id != "",
                older.c.endpoint_id == deliveries.c.endpoint_id,
                older.c.url == deliveries.c.url,
                older.c.created_at < deliveries.c.created_at,
            )
            .exists(),
        )
        .order_by(deliveries.c.next_attempt_at)
        .limit(limit * 4)
    )
    if full:
        query = query.where(deliveries.c.url.not_in(full))
    if connection.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    rows = connection.execute(query).all()
    claimed: list[ClaimedDelivery] = []
    for row in rows:
        if len(claimed) >= limit:
            break
        if max_per_url and in_flight.get(row.url, 0) >= max_per_url:
            continue
        result = connection.execute(
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
        in_flight[row.url] = in_flight.get(row.url, 0) + 1
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
                created_at=as_utc(row.created_at) if row.created_at is not None else None,
            )
        )
    if claimed:
        rows_of_bases = connection.execute(
            select(tables.redeliveries.c.delivery_id, tables.redeliveries.c.attempt_base).where(
                tables.redeliveries.c.delivery_id.in_([c.id for c in claimed])
            )
        )
        bases = {row.delivery_id: row.attempt_base for row in rows_of_bases}
        claimed = [
            dataclasses.replace(c, attempt_base=bases[c.id]) if c.id in bases else c
            for c in claimed
        ]
    return claimed


def record_attempt(
    connection: Connection,
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
    statements = _built(tables)
    result = connection.execute(
        statements.record_outcome,
        {
            "b_id": claim.id,
            "b_attempts": claim.attempts,
            "v_attempts": claim.attempt,
            "v_status": new_status,
            "v_next_attempt_at": next_attempt_at,
            "v_status_code": status_code,
            "v_error": error,
            "v_finished_at": None if new_status == PENDING else attempted_at,
        },
    )
    if getattr(result, "rowcount", 0) != 1:
        return False
    connection.execute(
        statements.record_attempt,
        {
            "delivery_id": claim.id,
            "attempt": claim.attempt,
            "attempted_at": attempted_at,
            "status_code": status_code,
            "latency_ms": latency_ms,
            "error": error,
        },
    )
    return True


# ---------------------------------------------------------------------------------------------
# Redelivery, test events, gauges


@dataclass(frozen=True)
class Redelivery:
    delivery_id: str
    webhook_id: str
    was: str  # the status it had


def request_redelivery(
    connection: Connection,
    tables: NotifierTables,
    *,
    account_id: str,
    delivery_id: str,
    now: datetime,
) -> Redelivery | None:
    """Send a delivery again, same body and `webhook-id`: it is due now and gets the whole retry
    schedule again (its attempts keep counting in the log). None when the account has no such
    delivery. A pending one is simply made due now."""
    deliveries = tables.deliveries
    row = (
        connection.execute(
            select(deliveries.c.webhook_id, deliveries.c.status, deliveries.c.attempts).where(
                deliveries.c.id == delivery_id, deliveries.c.account_id == account_id
            )
        )
    ).first()
    if row is None:
        return None
    connection.execute(
        update(deliveries)
        .where(deliveries.c.id == delivery_id)
        .values(status=PENDING, next_attempt_at=now, finished_at=None)
    )
    redeliveries = tables.redeliveries
    connection.execute(delete(redeliveries).where(redeliveries.c.delivery_id == delivery_id))
    connection.execute(
        insert(redeliveries).values(
            delivery_id=delivery_id, attempt_base=row.attempts, requested_at=now
        )
    )
    return Redelivery(delivery_id=delivery_id, webhook_id=row.webhook_id, was=row.status)


def pending_retries(connection: Connection, tables: NotifierTables) -> int:
    deliveries = tables.deliveries
    return int(
        connection.scalar(
            select(func.count())
            .select_from(deliveries)
            .where(deliveries.c.status == PENDING, deliveries.c.attempts > 0)
        )
        or 0
    )


def disabled_endpoint_count(connection: Connection, tables: NotifierTables) -> int:
    return int(connection.scalar(select(func.count()).select_from(tables.disabled_endpoints)) or 0)
