from pydantic import Field

from kiln_runtime.settings import ServiceSettings


class BillingSettings(ServiceSettings):
    service_name: str = "billing"
    http_port: int = 8002
    database_url: str = "sqlite:///.kiln/data/billing.db"
    # How often the ledger-total gauges are refreshed from the balance cache.
    ledger_gauges_interval_s: float = Field(default=15.0, gt=0)
