"""The stack's TCP ports: defaults, `KILN_<FIELD>_PORT` variables, free ports."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from kiln_stack.components import SERVICES
from kiln_stack.errors import StackError


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class StackPorts:
    """Every port of the stack. The environment names are `KILN_<FIELD>_PORT`."""

    kafka: int = 9092
    kafka_controller: int = 9093
    triton_http: int = 8010
    triton_grpc: int = 8011
    triton_metrics: int = 8012
    gateway: int = 8000
    billing: int = 8002
    scheduler: int = 8003
    inference: int = 8004
    notifier: int = 8005
    postgres: int = 5432  # a stack on PostgreSQL (postgres.py)

    @staticmethod
    def env_name(field: str) -> str:
        return f"KILN_{field.upper()}_PORT"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StackPorts:
        env = os.environ if env is None else env
        values: dict[str, int] = {}
        for field in dataclasses.fields(cls):
            raw = env.get(cls.env_name(field.name), "").strip()
            if raw:
                try:
                    values[field.name] = int(raw)
                except ValueError:
                    raise StackError(f"{cls.env_name(field.name)}={raw!r} is not a port") from None
        return cls(**values)

    @classmethod
    def free(cls) -> StackPorts:
        """Distinct ports that are free right now (for a test stack next to a running one)."""
        names = [field.name for field in dataclasses.fields(cls)]
        with contextlib.ExitStack() as held:
            ports: list[int] = []
            for _ in names:
                sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                sock.bind(("127.0.0.1", 0))
                ports.append(sock.getsockname()[1])
        return cls(**dict(zip(names, ports, strict=True)))

    def service(self, name: str) -> int:
        if name not in SERVICES:
            raise KeyError(name)
        port: int = getattr(self, name)
        return port


def port_accepts(port: int, host: str = "127.0.0.1", timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False
