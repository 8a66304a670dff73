"""Alembic's entry for the gateway's schema (kiln_runtime.migrations.run_env)."""

from kiln_gateway.tables import Base
from kiln_runtime.migrations import run_env


def _default_url() -> str:
    from kiln_gateway.config import GatewaySettings

    return GatewaySettings().database_url


run_env(Base.metadata, _default_url)
