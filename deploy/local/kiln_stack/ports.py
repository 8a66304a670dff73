"""The stack's TCP ports: defaults, `KILN_<FIELD>_PORT` variables, free ports."""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass

import port_for

from kiln_stack.components import SERVICES
from kiln_stack.errors import StackError

_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, for a server started later.

    It comes from outside the kernel's ephemeral range (port-for's "good" ports): a port the
    kernel picked for `bind(0)` is one it may give any program's next outgoing connection or
    `bind(0)` before our server binds it, which made a test stack's service find its port
    taken. A port is handed out once per process, so two stacks chosen before either starts
    never share one."""
    with _handed_out_lock:
        try:
            port: int = port_for.select_random(exclude_ports=_handed_out)
        except port_for.PortForException:
            # An ephemeral range that leaves no good ports (`1024 65535`): the kernel's choice.
            port = _kernel_port()
        _handed_out.add(port)
    return port


def _kernel_port() -> int:
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
        return cls(**{field.name: free_port() for field in dataclasses.fields(cls)})

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
