from pydantic import Field

from kiln_runtime.settings import ServiceSettings


class BillingSettings(ServiceSettings):
    service_name: str = "billing"
    http_port: int = 8002
    database_url: str = "sqlite+aiosqlite:///.kiln/data/billing.db"
    # How often the ledger-total gauges are refreshed from the balance cache.
    ledger_gauges_interval_s: float = Field(default=15.0, gt=0)
    # Kafka group membership: a billing worker that dies (SIGKILL, a lost node) holds its
    # partitions, so the credit decisions of its accounts, until the broker gives up on it.
    kafka_session_timeout_s: float = Field(default=10.0, ge=6.0)
    kafka_heartbeat_interval_s: float = Field(default=2.0, gt=0)
    kafka_rebalance_timeout_s: float = Field(default=60.0, gt=0)
