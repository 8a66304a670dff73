"""Alembic's entry for billing's schema (kiln_runtime.migrations.run_env)."""

from kiln_billing.tables import Base
from kiln_runtime.migrations import run_env


def _default_url() -> str:
    from kiln_billing.config import BillingSettings

    return BillingSettings().database_url


run_env(Base.metadata, _default_url)
