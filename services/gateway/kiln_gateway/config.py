from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from kiln_runtime.settings import ServiceSettings


class GatewaySettings(ServiceSettings):
    service_name: str = "gateway"
    http_port: int = 8000
    database_url: str = "sqlite:///.kiln/data/gateway.db"
    admin_token: str = ""
    # How long POST /jobs waits for billing's decision before answering `pending`.
    decision_wait_s: float = Field(default=2.0, ge=0)
    # While it waits, a request whose job's events another replica consumes reads the row
    # this often (this replica's consumer wakes it at once otherwise).
    decision_poll_s: float = Field(default=0.05, gt=0)
    max_body_bytes: int = 1024 * 1024
    # A body refused before its end (over max_body_bytes, a bad path) is still read, up to
    # these bounds, and thrown away before the answer: clients that send the whole body before
    # reading (urllib, requests, httpx) then read the 413 instead of a connection reset.
    # Past them the answer closes the connection (hostile_input.py says why).
    refused_body_drain_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    refused_body_drain_s: float = Field(default=30.0, gt=0)
    # An operator's content policy rules, added to the built-in ones (content_policy.py).
    content_policy_file: Path | None = None
    # Sessions (POST /api/v1/auth/token): an HS256 key of at least 32 characters, the same on
    # every replica. Empty: a random key per process (tokens die with it; one replica only).
    session_signing_key: str = Field(default="", pattern=r"^(|.{32,})$")
    session_ttl_s: int = Field(default=3600, gt=0, le=7 * 24 * 3600)
    # Login throttle: after this many failed logins in a window, per email and per client
    # address, answer 429 until the window ends.
    login_max_failures_per_email: int = Field(default=5, gt=0)
    login_max_failures_per_ip: int = Field(default=20, gt=0)
    login_failure_window_s: int = Field(default=300, gt=0)
    # How many proxies in front of the gateway append to X-Forwarded-For (0: the client's
    # address is the connection's). Used by the login throttle's per-address count.
    trusted_proxy_hops: int = Field(default=0, ge=0, le=10)
    # Rate limits per API key, requests per window (per minute by default: the defaults of
    # docs/architecture.md, "Envelopes and error codes").
    rate_limit_window_s: int = Field(default=60, gt=0)
    rate_limit_live_create: int = Field(default=100, gt=0)
    rate_limit_live_read: int = Field(default=600, gt=0)
    rate_limit_sandbox_create: int = Field(default=300, gt=0)
    rate_limit_sandbox_read: int = Field(default=1000, gt=0)
    # Where the counters live: "database" (counted in the process, added to rows shared by
    # every replica every rate_limit_sync_s), "database-per-request" (a write per request,
    # exact across replicas) or "memory" (per process).
    rate_limit_store: Literal["database", "database-per-request", "memory"] = "database"
    rate_limit_sync_s: float = Field(default=0.25, gt=0)
    # An API key revoked (or its account suspended) on another replica stops working within
    # this; each replica reads a key at most once per this long (keys/callers.py).
    api_key_cache_s: float = Field(default=1.0, gt=0, le=60)
    # `last_used_at` of the keys used meanwhile is written this often.
    last_used_flush_s: float = Field(default=5.0, gt=0)
    # The platform's Ed25519 private key for `v1a` webhook signatures (base64 of the raw 32
    # bytes), the same as the notifier's; GET /api/v1/webhooks/public-key serves its public
    # half. Empty: no `v1a` signatures, and that route answers 404.
    webhook_signing_key: str = ""
    # The keyring that seals webhook signing secrets wherever they are stored or sent
    # (kiln_crypto.sealed_secrets): comma-separated Fernet keys, the first one seals, every one
    # opens; the same value as the notifier's. Required: the gateway does not start without it.
    # Checked when the app is built, not here, so that no error message can quote a key.
    secrets_keys: SecretStr = SecretStr("")
    # The web console (/console, console/): a signed-in browser's session ends this long after
    # sign-in, or after this long without a request, whichever comes first.
    console_session_ttl_s: int = Field(default=12 * 3600, gt=0, le=7 * 24 * 3600)
    console_idle_timeout_s: int = Field(default=30 * 60, gt=0, le=7 * 24 * 3600)
    # The operator's health view: component name -> its readiness URL (`/readyz` of each
    # service, Triton's `/v2/health/ready`), as JSON. The Kafka consumer groups are always shown.
    console_health_urls: dict[str, str] = Field(default_factory=dict)
