"""Where one stack keeps everything, and the settings every part of it reads."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from kiln_stack.components import instance_counts
from kiln_stack.errors import StackError
from kiln_stack.ports import StackPorts

HERE = Path(__file__).resolve().parents[1]  # deploy/local
REPO = HERE.parents[1]

DEFAULT_SANDBOX_DELAY_MS = 10_000
DATABASES = ("sqlite", "postgresql")  # what a stack's services may keep their state in


class StackLayout:
    """What every part of a stack knows: its folders, ports, settings and addresses.

    The parts (install.py, processes.py, kafka.py, triton.py, services.py, demo.py) are mixins
    over this class; local_stack.LocalStack puts them together.
    """

    def __init__(
        self,
        root: Path,
        ports: StackPorts | None = None,
        sandbox_delay_ms: int = DEFAULT_SANDBOX_DELAY_MS,
        extra_env: Mapping[str, str] | None = None,
        *,
        kafka_libs: Path | None = None,
        python: Path | None = None,
        repo: Path = REPO,
        echo: Callable[[str], None] | None = None,
        instances: Mapping[str, int] | None = None,
        database: str = "sqlite",
    ) -> None:
        if database not in DATABASES:
            raise StackError(f"database {database!r}: one of {', '.join(DATABASES)}")
        self.root = Path(root).resolve()
        # Where the services keep their state: SQLite files in data/ (the default), or a
        # PostgreSQL cluster of the stack's own (postgres.py).
        self.database = database
        self.instances = instance_counts(instances)
        self.ports = ports or StackPorts()
        self.sandbox_delay_ms = sandbox_delay_ms
        self.extra_env = dict(extra_env or {})
        self.repo = repo.resolve()
        self.kafka_dir = self.root / "kafka"
        self.kafka_libs = (kafka_libs or self.kafka_dir / "libs").resolve()
        self.kafka_data = self.kafka_dir / "data"
        self.kafka_properties = self.kafka_dir / "server.properties"
        self.kafka_log4j = self.kafka_dir / "log4j.properties"
        self.data_dir = self.root / "data"
        self.blob_dir = self.data_dir / "blobs"
        self.logs_dir = self.root / "logs"
        self.run_dir = self.root / "run"
        self.secrets_file = self.root / "secrets.env"
        self.demo_env_file = self.root / "demo.env"
        self.python = python or self._default_python()
        self._echo = echo or (lambda line: print(line, flush=True))
        # the processes this object started (processes.py), to reap them and read their exit codes
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    def _default_python(self) -> Path:
        venv_python = self.repo / ".venv" / "bin" / "python"
        return venv_python if venv_python.exists() else Path(sys.executable)

    @property
    def kafka_bootstrap(self) -> str:
        return f"127.0.0.1:{self.ports.kafka}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.gateway}"

    @property
    def api_url(self) -> str:
        return f"{self.gateway_url}/api/v1"

    @property
    def triton_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.triton_http}"

    def _base_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _setting(self, key: str) -> str | None:
        return self.extra_env.get(key) or os.environ.get(key) or None
