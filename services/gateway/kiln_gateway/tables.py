"""The gateway's tables (SQLAlchemy declarative classes): accounts, API keys (hashes only), the job
and balance read models, webhook endpoints and the delivery log, idempotency records and
rate-limit windows. Their schema in a database comes from the Alembic migrations.

No secret is stored in clear: passwords as argon2 hashes, API key secrets and console session
tokens as SHA-256, webhook signing secrets sealed with the operator's keyring
(kiln_crypto.sealed_secrets). The `legacy_*` columns held webhook secrets in clear before
migration 0004 emptied them; they stay, empty, for one release, so that a replica of the
previous release finds no secret there during a rolling upgrade rather than a sealed one it
would take for a secret (docs/deploy.md, "Upgrading to sealed webhook secrets")."""

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from kiln_runtime.messaging import add_messaging_tables, utcnow


class Base(DeclarativeBase):
    metadata = MetaData()


MESSAGING = add_messaging_tables(Base.metadata)


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    password_hash: Mapped[str] = mapped_column(String(200))
    # The secret that signs deliveries to jobs' own webhook_urls, sealed (see above).
    sealed_webhook_secret: Mapped[str | None] = mapped_column(Text)
    # Empty; a clear secret only if a replica of the previous release made the account.
    legacy_default_webhook_secret: Mapped[str] = mapped_column(
        "default_webhook_secret", String(100), default=""
    )
    suspended: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(32))
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    sandbox: Mapped[bool] = mapped_column(Boolean)
    # kiln-hpke-v1 key material: only the public half and the salt are ever stored.
    result_salt: Mapped[bytes] = mapped_column()
    result_public_key: Mapped[bytes] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Job(Base):
    """The job read model, built from the pipeline's events."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(64), index=True)
    api_key_id: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16), index=True)
    input: Mapped[dict[str, Any]] = mapped_column(JSON)
    job_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    sandbox: Mapped[bool] = mapped_column(Boolean)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    queue_position: Mapped[int | None] = mapped_column(Integer)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    cost_millicredits: Mapped[int | None] = mapped_column(BigInteger)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    # While queued, from the scheduler's job.queued (issue 5).
    estimated_start_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    queue_reason: Mapped[str | None] = mapped_column(String(32))


class Balance(Base):
    """The last balance billing announced for an account."""

    __tablename__ = "balances"

    account_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    available_millicredits: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved_millicredits: Mapped[int] = mapped_column(BigInteger, default=0)
    as_of: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Billing's version of the balance (0: announced before versions): the latest wins.
    version: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class Grant(Base):
    """A credit grant the operator made, and whether billing booked it."""

    __tablename__ = "grants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(64), index=True)
    amount_millicredits: Mapped[int] = mapped_column(BigInteger)
    booked_millicredits: Mapped[int | None] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AccountEvent(Base):
    """The account's job and credit events in the order the gateway learned them, for
    `GET /events?after=` (clients that reconcile instead of trusting webhooks)."""

    __tablename__ = "account_events"

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    account_id: Mapped[str] = mapped_column(String(64), index=True)
    job_id: Mapped[str | None] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(64))
    sandbox: Mapped[bool] = mapped_column(Boolean, default=False)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)


class IdempotencyRecord(Base):
    """What a POST with an Idempotency-Key answered, replayed for 24 h."""

    __tablename__ = "idempotency_records"
    __table_args__ = (UniqueConstraint("scope", "key", name="uq_idempotency_scope_key"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    scope: Mapped[str] = mapped_column(String(200))  # who + which route
    key: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(64))  # SHA-256 of the canonical body
    # The job the request made, written with it (jobs/idempotency.py).
    job_id: Mapped[str | None] = mapped_column(String(64))
    # The answer, in records of the earlier scheme (claim, job, answer apart); unused since.
    status_code: Mapped[int | None] = mapped_column(Integer)
    body: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RateLimitWindow(Base):
    """One fixed window of a rate-limit counter (an API key's route class, a login bucket),
    incremented atomically so that every gateway replica counts against the same row."""

    __tablename__ = "rate_limit_windows"

    bucket: Mapped[str] = mapped_column(String(200), primary_key=True)
    window_start: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # epoch seconds
    hits: Mapped[int] = mapped_column(Integer, default=0)
    expires_at: Mapped[int] = mapped_column(BigInteger, index=True)  # epoch seconds


class WebhookEndpoint(Base):
    """An account-level webhook endpoint (issue 6). The secret is shown once, at creation; the
    notifier gets its own copy, sealed, through `webhooks.endpoint_changed`."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(64), index=True)
    url: Mapped[str] = mapped_column(Text)
    # The `whsec_` signing secret, sealed (see above).
    sealed_secret: Mapped[str | None] = mapped_column(Text)
    # Empty; a clear secret only if a replica of the previous release made the endpoint.
    legacy_secret: Mapped[str] = mapped_column("secret", String(100), default="")
    event_types: Mapped[list[str]] = mapped_column(JSON, default=list)  # empty = every type
    description: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Set when the receiver answered 410 Gone (from webhook.attempted); an update clears it.
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Rises with every change announced to the notifier (`webhooks.endpoint_changed`'s
    # `revision`, set by `save_endpoint`), which keeps the highest: a change sent again later
    # cannot undo a newer one. The read model's 410 disable moves it too, unannounced (the
    # notifier disabled the endpoint itself).
    revision: Mapped[int] = mapped_column(BigInteger, server_default="0")

    # An update is made only if the row still has the revision it was read with (the ORM
    # raises StaleDataError otherwise), so that two changes of one endpoint at once cannot
    # announce one revision for two states. PostgreSQL's row lock already orders them; SQLite
    # has none. `save_endpoint` sets the next revision itself (it has the clock as a floor).
    __mapper_args__ = {"version_id_col": revision, "version_id_generator": False}  # noqa: RUF012


class WebhookDeliveryRecord(Base):
    """The delivery log's deliveries, built from the notifier's `webhook.attempted` events
    (the gateway never reads the notifier's tables)."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the notifier's delivery id
    account_id: Mapped[str] = mapped_column(String(64), index=True)
    webhook_id: Mapped[str] = mapped_column(String(64))
    endpoint_id: Mapped[str] = mapped_column(String(64), index=True)  # "" for a job's webhook_url
    url: Mapped[str] = mapped_column(Text)
    event_type: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16))  # retrying | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class WebhookAttemptRecord(Base):
    """One attempt of a delivery: time, status code, latency, error, outcome."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (UniqueConstraint("delivery_id", "attempt", name="uq_webhook_attempts"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    delivery_id: Mapped[str] = mapped_column(String(64), index=True)
    account_id: Mapped[str] = mapped_column(String(64))
    attempt: Mapped[int] = mapped_column(Integer)
    attempted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status_code: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(16))
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ConsoleSession(Base):
    """A signed-in browser of the web console (console/sessions.py): an account holder's or the
    operator's. The cookie holds a random token; only its SHA-256 is stored here."""

    __tablename__ = "console_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # SHA-256 of the cookie's token
    kind: Mapped[str] = mapped_column(String(16))  # account | operator
    account_id: Mapped[str | None] = mapped_column(String(64), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    # The operator's: the SHA-256 of the admin token it signed in with (a new token ends it).
    admin_token_sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
