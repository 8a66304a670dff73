"""Alembic's entry for the scheduler's schema (kiln_runtime.migrations.run_env)."""

from kiln_runtime.migrations import run_env
from kiln_scheduler.tables import Base


def _default_url() -> str:
    from kiln_scheduler.config import SchedulerSettings

    return SchedulerSettings().database_url


run_env(Base.metadata, _default_url)
