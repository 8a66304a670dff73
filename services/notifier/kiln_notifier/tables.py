"""The notifier's tables: its copy of the webhook endpoints, the deliveries (one row per message
and target, carrying the retry state) and every attempt of each, plus the inbox/outbox.

An endpoint's signing secret is stored sealed with the operator's keyring
(kiln_crypto.sealed_secrets). The `secret` column held it in clear before migration 0003
emptied it; it stays, empty, for one release, so that a notifier of the previous release finds
no secret there during a rolling upgrade (it retries) rather than a sealed one it would sign
with (docs/deploy.md, "Upgrading to sealed webhook secrets")."""

from dataclasses import dataclass

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from kiln_runtime.messaging import MessagingTables, add_messaging_tables, utcnow

# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
_Id = BigInteger().with_variant(Integer(), "sqlite")

# Delivery statuses.
PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"

# endpoint_id of a delivery to a job's own webhook_url (signed with the account's default
# secret); the same "" that proto3 carries for "no endpoint" in webhook.delivered/failed.
JOB_WEBHOOK_URL = ""

# Every terminal webhook type: a job gets one of them per target, whichever comes first (a
# late job.completed after a job.failed, e.g. from a retried worker, announces nothing). The
# index `uq_deliveries_job_terminal` holds it even when two members record a job's ends at once.
TERMINAL_TYPES = frozenset({"job.completed", "job.failed", "job.canceled"})


@dataclass(frozen=True)
class NotifierTables:
    metadata: MetaData
    endpoints: Table
    deliveries: Table
    delivery_attempts: Table
    disabled_endpoints: Table
    redeliveries: Table
    messaging: MessagingTables


def make_tables() -> NotifierTables:
    metadata = MetaData()
    endpoints = Table(
        "endpoints",
        metadata,
        Column("endpoint_id", String(64), primary_key=True),
        Column("account_id", String(64), nullable=False, index=True),
        Column("url", String(2048), nullable=False, default=""),
        # The `whsec_` secret, sealed (see above).
        Column("sealed_secret", Text, nullable=True),
        # Empty; a clear secret only if a notifier of the previous release stored it.
        Column("secret", String(256), nullable=False, default=""),
        # Webhook types this endpoint wants ("job.completed", …); empty = every type.
        Column("event_types", JSON, nullable=False, default=list),
        # The account's default secret, used for per-job webhook_url deliveries.
        Column("is_default", Boolean, nullable=False, default=False),
        Column("deleted", Boolean, nullable=False, default=False),
        # When the gateway made the change (the event's occurred_at): the newest default wins.
        Column("changed_at", DateTime(timezone=True), nullable=False, default=utcnow),
        # The gateway's revision of the endpoint stored here: a lower one changes nothing.
        Column("revision", BigInteger, nullable=False, server_default="0"),
    )
    deliveries = Table(
        "deliveries",
        metadata,
        Column("id", String(64), primary_key=True),
        # The Standard Webhooks message id (`webhook-id`): the consumed event's id, the same
        # on every retry and for every target of one event.
        Column("webhook_id", String(64), nullable=False),
        Column("account_id", String(64), nullable=False),
        Column("job_id", String(64), nullable=False),
        Column("endpoint_id", String(64), nullable=False),  # JOB_WEBHOOK_URL for webhook_url
        Column("url", String(2048), nullable=False),
        Column("event_type", String(64), nullable=False),  # the webhook type, e.g. job.completed
        Column("payload", Text, nullable=False),  # the exact JSON body every attempt sends
        Column("status", String(16), nullable=False, default=PENDING),
        Column("attempts", Integer, nullable=False, default=0),
        Column("next_attempt_at", DateTime(timezone=True), nullable=True),
        Column("last_status_code", Integer, nullable=True),
        Column("last_error", Text, nullable=True),
        Column("trace_id", String(64), nullable=False, default=""),
        Column("created_at", DateTime(timezone=True), nullable=False, default=utcnow),
        Column("finished_at", DateTime(timezone=True), nullable=True),
        # One delivery per (event, target): a redelivered event adds no second one.
        UniqueConstraint("webhook_id", "endpoint_id", name="uq_deliveries_message_endpoint"),
        Index("ix_deliveries_due", "status", "next_attempt_at"),
        Index("ix_deliveries_account_created", "account_id", "created_at"),
        Index("ix_deliveries_job", "job_id"),
    )
    # One terminal delivery per job and target, whichever end was recorded first. With
    # `uq_deliveries_message_endpoint`, this is all that keeps deliveries from being recorded
    # twice: the notifier reads nothing first, and an insert skips the rows they refuse, in
    # its own transaction or when two members handle one job's `job.failed` and
    # `job.completed` at once (a zombie member during a rebalance) (docs/architecture.md,
    # "Webhooks").
    terminal = deliveries.c.event_type.in_(sorted(TERMINAL_TYPES))
    Index(
        "uq_deliveries_job_terminal",
        deliveries.c.job_id,
        deliveries.c.endpoint_id,
        unique=True,
        sqlite_where=terminal,
        postgresql_where=terminal,
    )
    delivery_attempts = Table(
        "delivery_attempts",
        metadata,
        Column("id", _Id, primary_key=True, autoincrement=True),
        Column("delivery_id", String(64), ForeignKey("deliveries.id"), nullable=False),
        Column("attempt", Integer, nullable=False),  # 1 for the first try
        Column("attempted_at", DateTime(timezone=True), nullable=False),
        Column("status_code", Integer, nullable=True),  # None when no HTTP response came
        Column("latency_ms", Integer, nullable=False),
        Column("error", Text, nullable=True),
        UniqueConstraint("delivery_id", "attempt", name="uq_delivery_attempts_attempt"),
    )
    # Endpoints that answered 410 Gone: nothing more is sent to them until the gateway announces
    # a change of the endpoint (an update re-enables it). A table of its own, so that an
    # existing database gains it without a migration.
    disabled_endpoints = Table(
        "disabled_endpoints",
        metadata,
        Column("endpoint_id", String(64), primary_key=True),
        Column("account_id", String(64), nullable=False),
        Column("disabled_at", DateTime(timezone=True), nullable=False, default=utcnow),
        Column("reason", Text, nullable=False, default=""),
    )
    # A redelivery requested through the gateway: the retry schedule starts over after the
    # attempts made so far (attempt_base). Its own table, like disabled_endpoints.
    redeliveries = Table(
        "redeliveries",
        metadata,
        Column("delivery_id", String(64), primary_key=True),
        Column("attempt_base", Integer, nullable=False),
        Column("requested_at", DateTime(timezone=True), nullable=False, default=utcnow),
    )
    messaging = add_messaging_tables(metadata)
    return NotifierTables(
        metadata=metadata,
        endpoints=endpoints,
        deliveries=deliveries,
        delivery_attempts=delivery_attempts,
        disabled_endpoints=disabled_endpoints,
        redeliveries=redeliveries,
        messaging=messaging,
    )
