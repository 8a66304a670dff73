"""Alembic's entry for the inference worker's schema (kiln_runtime.migrations.run_env)."""

from kiln_inference.tables import Base
from kiln_runtime.migrations import run_env


def _default_url() -> str:
    from kiln_inference.config import InferenceSettings

    return InferenceSettings().database_url


run_env(Base.metadata, _default_url)
