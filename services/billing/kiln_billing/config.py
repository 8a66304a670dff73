from kiln_runtime.settings import ServiceSettings


class BillingSettings(ServiceSettings):
    service_name: str = "billing"
    http_port: int = 8002
    database_url: str = "sqlite+aiosqlite:///.kiln/data/billing.db"
