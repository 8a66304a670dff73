"""The notifier's settings (KILN_ environment variables, see kiln_runtime.settings)."""

from pydantic import Field, SecretStr, field_validator, model_validator

from kiln_runtime.settings import ServiceSettings


class NotifierSettings(ServiceSettings):
    service_name: str = "notifier"
    http_port: int = 8005
    database_url: str = "sqlite:///.kiln/data/notifier.db"
    # Delays before retry 1, 2, …; after the last one fails the delivery is given up
    # (webhook.failed). As JSON in the environment: KILN_RETRY_SCHEDULE_S='[10, 60, 300]'.
    retry_schedule_s: list[float] = Field(
        default_factory=lambda: [10.0, 60.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]
    )
    # A 2xx within this time counts as delivered (DNS, connect, TLS and response together).
    delivery_timeout_s: float = Field(default=10.0, gt=0)
    # How often the sender looks for due deliveries when it has nothing in flight.
    delivery_poll_interval_s: float = Field(default=0.5, gt=0)
    max_concurrent_deliveries: int = Field(default=64, gt=0)
    # An idle kept-alive connection to a pinned endpoint is closed after this long.
    keepalive_s: float = Field(default=30.0, gt=0)
    # A claimed delivery whose outcome was never recorded (the process died mid-send) is due
    # again after this long; it must outlast one attempt.
    delivery_lease_s: float = Field(default=60.0, gt=0)
    # At most this many attempts in flight to one endpoint (one URL), so that a slow or dead
    # receiver holds a few slots and never the whole sender.
    max_concurrent_per_endpoint: int = Field(default=4, gt=0)
    # A 429's Retry-After is honoured up to this many seconds (longer waits are capped).
    max_retry_after_s: float = Field(default=36000.0, gt=0)
    # The platform's Ed25519 private key (base64 of the raw 32 bytes; standard or URL-safe
    # alphabet) for the `v1a` signature; the gateway serves its public key. Empty: `v1` only.
    webhook_signing_key: str = ""
    # The keyring that seals the webhook signing secrets this service stores and receives
    # (kiln_crypto.sealed_secrets): comma-separated Fernet keys, the first one seals, every one
    # opens; the same value as the gateway's. Required: the notifier does not start without it.
    # Checked when the app is built, not here, so that no error message can quote a key.
    secrets_keys: SecretStr = SecretStr("")
    # How often the pending-retries and disabled-endpoints gauges are refreshed.
    metrics_refresh_s: float = Field(default=5.0, gt=0)

    @field_validator("retry_schedule_s")
    @classmethod
    def _delays_not_negative(cls, value: list[float]) -> list[float]:
        if any(delay < 0 for delay in value):
            raise ValueError("retry delays must not be negative")
        return value

    @field_validator("webhook_signing_key")
    @classmethod
    def _signing_key_is_ed25519(cls, value: str) -> str:
        if value:
            from kiln_notifier.signing import load_signing_key

            load_signing_key(value)  # raises ValueError when it is not 32 base64 bytes
        return value

    @model_validator(mode="after")
    def _lease_outlasts_attempt(self) -> "NotifierSettings":
        if self.delivery_lease_s <= self.delivery_timeout_s:
            raise ValueError("delivery_lease_s must be longer than delivery_timeout_s")
        return self
