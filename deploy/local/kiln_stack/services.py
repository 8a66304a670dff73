"""The services' processes: instances, ports, environment, start, stop, readiness."""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import httpx

from kiln_stack.components import SERVICES, instance_name, split_instance
from kiln_stack.errors import StackError
from kiln_stack.ports import free_port, port_accepts
from kiln_stack.postgres import PostgresMixin, database_name
from kiln_stack.processes import STOP_GRACE_S, tail

SERVICES_READY_TIMEOUT_S = 240.0  # inference waits for every Triton model; slow on a busy box


class ServicesMixin(PostgresMixin):
    """The five services, each as one or more instances (processes), and their settings."""

    def _resolve(self, name: str, instance: int | None = None) -> tuple[str, int]:
        """(service, instance) from a service name and an instance number (default 1), or
        from a component name such as `billing-2`, which names its instance itself (then
        `instance` is left at its default or agrees)."""
        service, number = split_instance(name)
        if service not in SERVICES:
            raise StackError(f"unknown service {name!r} (one of {', '.join(SERVICES)})")
        if number == 1:
            number = 1 if instance is None else instance
        elif instance not in (None, 1, number):
            raise StackError(f"{name} is instance {number}, not {instance}")
        instance_name(service, number)  # validates the number
        return service, number

    def port_file(self, name: str) -> Path:
        """Where the port of an extra instance (`billing-2`) is kept once it was chosen."""
        return self.run_dir / f"{name}.port"

    def service_port(self, name: str, instance: int = 1) -> int | None:
        """The HTTP port of a service instance: instance 1's is in `ports`; another's was
        chosen at its first start (None when it never started)."""
        service, number = self._resolve(name, instance)
        if number == 1:
            return self.ports.service(service)
        try:
            return int(self.port_file(instance_name(service, number)).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def service_url(self, name: str, instance: int = 1) -> str:
        port = self.service_port(name, instance)
        if port is None:
            component = instance_name(*self._resolve(name, instance))
            raise StackError(f"{component} has no port yet: it never started")
        return f"http://127.0.0.1:{port}"

    def service_instances(self, name: str) -> list[int]:
        """The instance numbers of a service this stack knows of: 1 to its configured count,
        and any other whose pidfile exists (say, started by an earlier `up --instances`)."""
        if name not in SERVICES:
            raise StackError(f"unknown service {name!r} (one of {', '.join(SERVICES)})")
        numbers = set(range(1, self.instances[name] + 1))
        if self.run_dir.is_dir():
            pattern = re.compile(rf"{re.escape(name)}-([0-9]+)\.pid")
            for path in self.run_dir.iterdir():
                found = pattern.fullmatch(path.name)
                if found and int(found.group(1)) >= 2:
                    numbers.add(int(found.group(1)))
        return sorted(numbers)

    def service_components(self) -> list[str]:
        """Every service instance this stack knows of, by component name, in SERVICES order."""
        return [instance_name(name, i) for name in SERVICES for i in self.service_instances(name)]

    def service_env(self, name: str, instance: int = 1) -> dict[str, str]:
        """The environment of one service instance.

        Every instance of a service has the service's name (`KILN_SERVICE_NAME`), so they are
        members of one Kafka consumer group that splits the partitions between them, and they
        share the service's database (`database_url`), as the replicas of one deployment share
        theirs: billing, the gateway and the notifier decide under row locks (or SQLite's
        database lock), and so does the scheduler (below). Each instance has its own HTTP port.

        Inference is different: each worker instance has a database of its own
        (data/inference-<i>.db, or the database inference_<i>; instance 1 keeps inference's)
        and its own `KILN_WORKER_ID` (`inference-<i>`), as a worker pod with local state would. Its
        database is the worker's private queue, not shared state: the `work_items` it accepted
        from its own partitions, which it runs again when it starts (on a shared file, a
        starting worker would run the items another one is running). The cost: the work a
        stopped instance accepted waits in its file until that instance runs again or the
        scheduler's lost-worker rule retries it.

        The scheduler: each instance holds the queue of the partitions (accounts) it was
        assigned, in memory, and the instances share only each pool's slots in use (a row per
        pool, moved in each batch's transaction): several instances split the accounts between
        them (docs/architecture.md, "Scheduler").

        Every instance has its own `KILN_INSTANCE_ID` (`<service>-<i>`): its outbox rows carry
        it, and an instance restarted under the same id sends what its earlier life left at
        once (docs/architecture.md, "Publish on commit").

        A second instance of a shared-database service starts once instance 1 is ready (its
        schema migration ran), see `_start_instances`.
        """
        service, number = self._resolve(name, instance)
        port = self.service_port(service, number)
        if port is None:
            raise StackError(f"{instance_name(service, number)} has no port yet (start it)")
        keys = self.secrets()
        env = self._base_env()
        env.update(
            {
                "KILN_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
                "KILN_DATA_DIR": str(self.data_dir),
                "KILN_BLOB_DIR": str(self.blob_dir),
                "KILN_ALLOW_LOOPBACK_URLS": "true",
                "KILN_FILES_SIGNING_KEY": keys["KILN_FILES_SIGNING_KEY"],
                "KILN_ADMIN_TOKEN": keys["KILN_ADMIN_TOKEN"],
                "KILN_PUBLIC_URL": self.gateway_url,
                "KILN_LOG_LEVEL": "INFO",
                "KILN_SERVICE_NAME": service,
                "KILN_INSTANCE_ID": instance_name(service, number),
                "KILN_HTTP_PORT": str(port),
                "KILN_DATABASE_URL": self.database_url(service, number),
            }
        )
        if service == "gateway":
            env["KILN_SESSION_SIGNING_KEY"] = keys["KILN_SESSION_SIGNING_KEY"]
            # The console's health view asks each other component (instance 1) itself.
            env["KILN_CONSOLE_HEALTH_URLS"] = json.dumps(
                {
                    **{
                        other: f"http://127.0.0.1:{self.ports.service(other)}/readyz"
                        for other in SERVICES
                        if other != "gateway"
                    },
                    "triton": f"http://127.0.0.1:{self.ports.triton_http}/v2/health/ready",
                }
            )
        if service in ("gateway", "notifier"):
            env["KILN_WEBHOOK_SIGNING_KEY"] = keys["KILN_WEBHOOK_SIGNING_KEY"]
            env["KILN_SECRETS_KEYS"] = keys["KILN_SECRETS_KEYS"]
        if service == "inference":
            env["KILN_TRITON_GRPC_URL"] = f"127.0.0.1:{self.ports.triton_grpc}"
            env["KILN_SANDBOX_DELAY_MS"] = str(self.sandbox_delay_ms)
            env["KILN_WORKER_ID"] = f"inference-{number}"
        env.update(self.extra_env)
        return env

    def database_url(self, name: str, instance: int = 1) -> str:
        """The database of a service instance (`name` may be a component such as `inference-2`):
        data/<name>.db on SQLite; on PostgreSQL, the database `<name>` of the stack's cluster
        (`inference_2` for `inference-2`), as a plain URL with the role's password.

        The instances of a service share its database, except inference's (see `service_env`)."""
        owner = self._database_owner(*self._resolve(name, instance))
        if self.uses_postgres:
            return self.postgres_server().url(database_name(owner))
        return f"sqlite:///{self.data_dir}/{owner}.db"

    def _database_owner(self, service: str, number: int) -> str:
        """The component whose database an instance uses: its own, or instance 1's."""
        if number == 1 or not self._shares_database(service):
            return instance_name(service, number)
        return service

    def _shares_database(self, service: str) -> bool:
        return service != "inference"

    def _choose_port(self, service: str, number: int) -> int:
        """Instance 1: its port of `ports` (which must be free). Another instance: the port it
        had before when that is free, else a new free one, kept in its port file."""
        if number == 1:
            port = self.ports.service(service)
            self._check_ports_free(service, {service: port})
            return port
        component = instance_name(service, number)
        kept = self.service_port(service, number)
        if kept is not None and not port_accepts(kept):
            return kept
        port = free_port()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.port_file(component).write_text(f"{port}\n")
        return port

    def start_service(self, name: str, instance: int = 1) -> int:
        """Start one service instance (no-op when it runs); returns its pid. Does not wait
        for it. `name` may also be a component name such as `billing-2`."""
        service, number = self._resolve(name, instance)
        component = instance_name(service, number)
        self._reap_orphans(component)
        pid = self.pid(component)
        if pid is not None:
            url = self.service_url(service, number)
            self._echo(f"{component}: already running (pid {pid}) on {url}")
            return pid
        self._choose_port(service, number)
        if self.uses_postgres:
            self.ensure_database(database_name(self._database_owner(service, number)))
        env = self.service_env(service, number)
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        pid = self._spawn(component, [str(self.python), "-m", f"kiln_{service}"], env)
        self._echo(f"{component}: starting (pid {pid}) on {self.service_url(service, number)}")
        return pid

    def stop_service(
        self,
        name: str,
        sig: int = signal.SIGTERM,
        grace_s: float = STOP_GRACE_S,
        instance: int | None = None,
    ) -> bool:
        """Send `sig` to the process group of each instance of a service (SIGKILL after
        `grace_s`), or of one (`instance`, or a component name such as `billing-2`); True if
        any ran."""
        service, number = split_instance(name)
        if service not in SERVICES:
            raise StackError(f"unknown service {name!r}")
        if number == 1 and instance is None:
            components = [instance_name(service, i) for i in self.service_instances(service)]
        else:
            components = [instance_name(*self._resolve(name, instance))]
        return bool(self._stop(components, sig, grace_s))

    def service_ready(self, name: str, timeout_s: float = 2.0, instance: int = 1) -> bool:
        port = self.service_port(name, instance)
        if port is None:
            return False
        try:
            response = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=timeout_s)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def _expand(self, names: Iterable[str] | None) -> list[str]:
        """Component names: a service stands for each of its configured instances."""
        components: list[str] = []
        for name in SERVICES if names is None else names:
            if name in SERVICES:
                wanted = [instance_name(name, i) for i in range(1, self.instances[name] + 1)]
            else:
                wanted = [instance_name(*self._resolve(name))]
            components += [c for c in wanted if c not in components]
        return components

    def wait_ready(
        self, names: Iterable[str] | None = None, timeout_s: float = SERVICES_READY_TIMEOUT_S
    ) -> None:
        """Wait until each service's /readyz answers 200 (every configured instance of a
        service, or the instances named like `billing-2`); one that exits or stays unready
        raises StackError with the end of its log."""
        self._wait_components(self._expand(names), timeout_s)

    def _wait_components(self, components: Sequence[str], timeout_s: float) -> None:
        pending = list(components)
        deadline = time.monotonic() + timeout_s
        while pending:
            for name in list(pending):
                pid = self.pid(name)
                if pid is None:
                    raise self._died(name, self._gone(name))
                if self.service_ready(name):
                    pending.remove(name)
                    self._echo(f"{name}: ready on {self.service_url(name)}")
            if not pending:
                return
            if time.monotonic() >= deadline:
                raise StackError(
                    "\n\n".join(
                        f"{name} was not ready within {timeout_s:.0f} s; the end of "
                        f"{self.log_file(name)}:\n{tail(self.log_file(name))}"
                        for name in pending
                    )
                )
            time.sleep(0.5)

    def _start_instances(
        self, wanted: Sequence[tuple[str, int]], timeout_s: float = SERVICES_READY_TIMEOUT_S
    ) -> list[str]:
        """Start service instances and wait until they are ready; returns their components.

        Instance 1 of each service (and every inference instance: each has its own database)
        goes first; the other instances of a shared-database service start once those are
        ready, so that only one process migrates the database's schema (two `create_all` or
        Alembic upgrades racing on one empty file would fail)."""
        first = [(s, i) for s, i in wanted if i == 1 or not self._shares_database(s)]
        later = [(s, i) for s, i in wanted if (s, i) not in first]
        for batch in (first, later):
            if not batch:
                continue
            for service, number in batch:
                self.start_service(service, number)
            self._wait_components([instance_name(s, i) for s, i in batch], timeout_s)
        return [instance_name(s, i) for s, i in wanted]
