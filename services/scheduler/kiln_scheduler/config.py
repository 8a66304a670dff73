from pydantic import Field

from kiln_runtime.settings import ServiceSettings


class SchedulerSettings(ServiceSettings):
    service_name: str = "scheduler"
    http_port: int = 8003
    database_url: str = "sqlite+aiosqlite:///.kiln/data/scheduler.db"
    # Overrides of the catalog's pool capacities, e.g. KILN_POOL_CAPACITY='{"cpu-image": 4}'.
    pool_capacity: dict[str, int] = Field(default_factory=dict)
