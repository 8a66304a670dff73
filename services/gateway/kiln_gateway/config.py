from pathlib import Path

from pydantic import Field

from kiln_runtime.settings import ServiceSettings


class GatewaySettings(ServiceSettings):
    service_name: str = "gateway"
    http_port: int = 8000
    database_url: str = "sqlite+aiosqlite:///.kiln/data/gateway.db"
    admin_token: str = ""
    # How long POST /jobs waits for billing's decision before answering `pending`.
    decision_wait_s: float = Field(default=2.0, ge=0)
    max_body_bytes: int = 1024 * 1024
    # An operator's content policy rules, added to the built-in ones (content_policy.py).
    content_policy_file: Path | None = None
