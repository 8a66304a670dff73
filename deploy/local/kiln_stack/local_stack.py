"""One local stack: Kafka, Triton and the services, started, stopped and reported together."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from kiln_stack.components import (
    KAFKA,
    POSTGRES,
    SERVICES,
    TRITON,
    instance_counts,
    instance_name,
)
from kiln_stack.demo import DemoMixin
from kiln_stack.envfiles import read_env_file, write_env_file
from kiln_stack.errors import StackError
from kiln_stack.kafka import KafkaMixin
from kiln_stack.layout import DEFAULT_SANDBOX_DELAY_MS, REPO
from kiln_stack.ports import StackPorts, port_accepts
from kiln_stack.processes import group_members
from kiln_stack.services import SERVICES_READY_TIMEOUT_S
from kiln_stack.triton import TritonMixin

STACK_ENV_FILE = "stack.env"


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    pid: int | None
    address: str
    ready: bool

    @property
    def running(self) -> bool:
        return self.pid is not None


class LocalStack(KafkaMixin, TritonMixin, DemoMixin):
    """One local Kiln stack rooted at `root` (what `.kiln` is for `make up`).

    `extra_env` goes last into the environment of Triton and of every service (tests use it to
    tune settings). `kafka_libs` lets several stacks share one folder of Kafka jars; `python` is
    the interpreter of the services (default: the workspace's `.venv/bin/python`).

    `database` is where the services keep their state: "sqlite" (files in data/, the default)
    or "postgresql" (a cluster of the stack's own, postgres.py). `from_env` takes
    `KILN_STACK_DATABASE`, else what the stack's last `up` ran on (stack.env).

    `instances` runs several processes of a service (`{"inference": 4, "billing": 2}`; 1 for a
    service it does not name). Instance 1 is the service's usual process; instance i >= 2 is the
    component `<service>-<i>` with its own pidfile, log and port (`service_url(name, i)`).
    `scale(name, n)` changes the count of a running stack. The scheduler may run several
    instances, but they add no throughput (see `service_env`).
    """

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LocalStack:
        env = os.environ if env is None else env
        root = Path(env.get("KILN_STACK_DIR") or REPO / ".kiln")
        libs = env.get("KILN_KAFKA_LIBS_DIR")
        chosen = read_env_file(root / STACK_ENV_FILE)  # what the last `up` ran on
        delay = env.get("KILN_SANDBOX_DELAY_MS") or str(DEFAULT_SANDBOX_DELAY_MS)
        try:
            sandbox_delay_ms = int(delay)
        except ValueError:
            raise StackError(f"KILN_SANDBOX_DELAY_MS={delay!r} is not a number") from None
        return cls(
            root,
            StackPorts.from_env(env),
            sandbox_delay_ms,
            kafka_libs=Path(libs) if libs else None,
            database=env.get("KILN_STACK_DATABASE") or chosen.get("KILN_STACK_DATABASE", "sqlite"),
        )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One `up`/`down` at a time per stack folder."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with (self.run_dir / "stack.lock").open("w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._echo("waiting for another stack.py working on this stack...")
                fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def up(self) -> dict[str, str]:
        """Start whatever is not running (each configured instance of each service), then
        bootstrap the demo account; returns demo.env. Instances beyond the configured counts
        that already run are left alone (`scale` stops them, `down` too)."""
        with self._locked():
            for folder in (self.data_dir, self.blob_dir, self.logs_dir, self.run_dir):
                folder.mkdir(parents=True, exist_ok=True)
            write_env_file(
                self.root / STACK_ENV_FILE,
                {"KILN_STACK_DATABASE": self.database},
                header=["What the last `up` of this stack ran on (deploy/local/stack.py)."],
            )
            self.install()
            if self.uses_postgres:
                self.start_postgres()
            self.start_kafka()
            self.create_topics()
            self.start_triton()
            self._echo(
                "services: loopback webhook/image URLs are allowed "
                "(KILN_ALLOW_LOOPBACK_URLS=true), for local use only"
            )
            self._start_instances(
                [(name, i) for name in SERVICES for i in range(1, self.instances[name] + 1)]
            )
            demo = self.bootstrap_demo()
        self.print_summary()
        return demo

    def down(self, *, discard: bool = False) -> list[str]:
        """Stop the services (every instance), then Triton, then Kafka, then PostgreSQL when it
        runs; returns the names that were running. The data is kept, unless `discard` (a test's
        throwaway stack, whose folder goes next): then every process is killed at once rather
        than shut down, and a PostgreSQL cluster kept outside the folder is removed."""
        sig = signal.SIGKILL if discard else signal.SIGTERM
        with self._locked():
            stopped = self._stop(self.service_components(), sig)
            stopped += self._stop([TRITON], sig)
            stopped += self._stop([KAFKA], sig)
            if self.stop_postgres("immediate" if discard else "fast"):
                stopped.append(POSTGRES)
            if discard:
                self.discard_postgres()
        for name in stopped:
            self._echo(f"{name}: stopped")
        if not stopped:
            self._echo("nothing was running")
        return stopped

    def status(self) -> list[ComponentStatus]:
        result = []
        kafka_pid = self.pid(KAFKA)
        result.append(
            ComponentStatus(
                KAFKA,
                kafka_pid,
                self.kafka_bootstrap,
                kafka_pid is not None and port_accepts(self.ports.kafka),
            )
        )
        triton_pid = self.pid(TRITON)
        result.append(
            ComponentStatus(
                TRITON, triton_pid, self.triton_url, triton_pid is not None and self.triton_ready()
            )
        )
        postgres_pid = self.postgres_pid()
        if self.uses_postgres or postgres_pid is not None:
            result.append(
                ComponentStatus(
                    POSTGRES,
                    postgres_pid,
                    f"127.0.0.1:{self.ports.postgres}",
                    postgres_pid is not None and port_accepts(self.ports.postgres),
                )
            )
        for name in self.service_components():
            pid = self.pid(name)
            ready = pid is not None and self.service_ready(name, timeout_s=1.0)
            port = self.service_port(name)
            address = f"http://127.0.0.1:{port}" if port is not None else "-"
            result.append(ComponentStatus(name, pid, address, ready))
        return result

    def processes(self) -> dict[str, list[int]]:
        """The pids of each running component's process group ("kafka", "triton", "gateway",
        "billing-2", ..., "postgres"), its leader first: Triton's holds the PyTriton process,
        the tritonserver binary and its Python backend stubs; PostgreSQL's its postmaster and
        backends."""
        result: dict[str, list[int]] = {}
        postgres_pid = self.postgres_pid()
        if postgres_pid is not None:
            members = group_members(postgres_pid)
            result[POSTGRES] = sorted(members, key=lambda member: (member != postgres_pid, member))
        for name in [KAFKA, TRITON, *self.service_components()]:
            pid = self.pid(name)
            if pid is None:
                continue
            members = group_members(pid)
            if members:
                result[name] = sorted(members, key=lambda member: (member != pid, member))
        return result

    def scale(
        self, name: str, count: int, timeout_s: float = SERVICES_READY_TIMEOUT_S
    ) -> tuple[list[str], list[str]]:
        """Run `count` instances of a service on a running stack (Kafka and Triton stay up):
        start the missing ones and wait until they are ready, stop the extra ones (highest
        first, SIGTERM). Returns (started, stopped) component names.

        Scale between runs, when the pipeline is idle: a stopped inference instance keeps the
        work it had accepted in its own database (see `service_env`), and its partitions move
        to the others only after the consumer group rebalanced."""
        counts = instance_counts({**self.instances, name: count})
        with self._locked():
            self.instances = counts
            stopped: list[str] = []
            for number in sorted(self.service_instances(name), reverse=True):
                if number > count:
                    stopped += self._stop([instance_name(name, number)])
            missing = [
                (name, i) for i in range(1, count + 1) if self.pid(instance_name(name, i)) is None
            ]
            if missing and self.pid(KAFKA) is None:
                raise StackError(f"cannot scale {name}: Kafka does not run (run `up` first)")
            started = self._start_instances(missing, timeout_s)
        for component in stopped:
            self._echo(f"{component}: stopped")
        return started, stopped

    def print_summary(self) -> None:
        self._echo("")
        self._echo("Kiln is up.")
        self._echo(f"  Gateway:       {self.gateway_url}  (API {self.api_url})")
        self._echo(
            f"  Demo account:  {self.demo_env_file}  "
            f"(load it: set -a; . {self._shown(self.demo_env_file)}; set +a)"
        )
        self._echo(f"  Logs:          {self.logs_dir}/")
        self._echo(
            "  Loopback webhook/image URLs are allowed (KILN_ALLOW_LOOPBACK_URLS=true): "
            "for local use only."
        )

    def _shown(self, path: Path) -> str:
        """A path relative to the current folder when it is inside it."""
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)
