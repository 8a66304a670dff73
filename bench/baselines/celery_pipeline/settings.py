"""Where the baseline's processes find Redis, the database, Triton and their files.

The launcher passes these to the HTTP endpoint and the Celery worker as environment variables,
the way a team would configure such an application.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

REDIS_URL: Final = "KILN_BASELINE_REDIS_URL"
DB_PATH: Final = "KILN_BASELINE_DB"
RESULTS_DIR: Final = "KILN_BASELINE_RESULTS_DIR"
TRITON_GRPC_URL: Final = "KILN_BASELINE_TRITON_GRPC_URL"
READY_FILE: Final = "KILN_BASELINE_READY_FILE"
PREFETCH_MULTIPLIER: Final = "KILN_BASELINE_PREFETCH_MULTIPLIER"

QUEUE: Final = "kiln-baseline"  # the Celery queue of the jobs


@dataclass(frozen=True)
class Settings:
    redis_url: str
    db_path: Path
    results_dir: Path
    triton_grpc_url: str  # "127.0.0.1:8001"
    ready_file: Path | None
    prefetch_multiplier: int

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        ready = env.get(READY_FILE)
        return cls(
            redis_url=env.get(REDIS_URL, "redis://127.0.0.1:6379/0"),
            db_path=Path(env.get(DB_PATH, "baseline.db")),
            results_dir=Path(env.get(RESULTS_DIR, "results")),
            triton_grpc_url=env.get(TRITON_GRPC_URL, "127.0.0.1:8001"),
            ready_file=Path(ready) if ready else None,
            prefetch_multiplier=int(env.get(PREFETCH_MULTIPLIER, "4")),
        )

    def to_env(self) -> dict[str, str]:
        env = {
            REDIS_URL: self.redis_url,
            DB_PATH: str(self.db_path),
            RESULTS_DIR: str(self.results_dir),
            TRITON_GRPC_URL: self.triton_grpc_url,
            PREFETCH_MULTIPLIER: str(self.prefetch_multiplier),
        }
        if self.ready_file is not None:
            env[READY_FILE] = str(self.ready_file)
        return env
