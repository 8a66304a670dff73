"""Alembic's entry for the notifier's schema (kiln_runtime.migrations.run_env)."""

from kiln_notifier.tables import make_tables
from kiln_runtime.migrations import run_env


def _default_url() -> str:
    from kiln_notifier.config import NotifierSettings

    return NotifierSettings().database_url


run_env(make_tables().metadata, _default_url)
