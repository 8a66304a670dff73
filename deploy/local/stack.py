"""Kiln's local stack: one Kafka broker (KRaft), a Triton server and the five services.

    uv run python deploy/local/stack.py up       # install what is missing, start, bootstrap demo
    uv run python deploy/local/stack.py down     # stop what `up` started (data is kept)
    uv run python deploy/local/stack.py status   # what runs
    uv run python deploy/local/stack.py install  # only the Debian packages and the Kafka jars

    uv run python deploy/local/stack.py up --instances inference=2,billing=2
    uv run python deploy/local/stack.py scale --instances inference=4   # on a running stack

Several instances of a service: instance 1 is the service's usual process (`billing`:
run/billing.pid, logs/billing.log, its port of `StackPorts`); instance i >= 2 is `billing-<i>`
(run/billing-<i>.pid, logs/billing-<i>.log, a free port kept in run/billing-<i>.port). All
instances of a service are members of its Kafka consumer group; see `LocalStack.service_env` for
their databases.

Everything lives under one folder, `KILN_STACK_DIR` (default `<repo>/.kiln`):

    kafka/libs/        the broker's jars (Maven Central, deploy/local/pom.xml)
    kafka/data/        the broker's log dirs (KRaft metadata and topics)
    kafka/*.properties generated from deploy/local/*.properties.in
    data/              the services' SQLite files; data/blobs/ their blobs
    logs/              one log per process
    run/               pidfiles (and the ports of extra service instances)
    secrets.env        the admin token and the signing keys (made once, then reused)
    demo.env           the demo account (`set -a; . .kiln/demo.env; set +a`)

Tests use the same code through `tests/stack_support.py`: `LocalStack(tmp_dir, StackPorts.free())`
starts a whole stack of its own in a temporary folder on free ports.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import fcntl
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

SERVICES: tuple[str, ...] = ("gateway", "billing", "scheduler", "inference", "notifier")
KAFKA = "kafka"
TRITON = "triton"

APT_PACKAGES_FILE = HERE / "apt-packages.txt"
POM_FILE = HERE / "pom.xml"
KAFKA_PROPERTIES_TEMPLATE = HERE / "kafka-server.properties.in"
KAFKA_LOG4J_TEMPLATE = HERE / "kafka-log4j.properties.in"
KAFKA_JAR_GLOB = "kafka_2.13-*.jar"
KAFKA_JVM_OPTS = ("-Xms256m", "-Xmx768m", "-Djava.awt.headless=true")

DEMO_EMAIL = "demo@kiln.local"
DEMO_NAME = "Demo"
DEMO_CREDITS = "1000"
# Made once per stack folder (secrets.env), then reused by every `up`.
SECRET_NAMES = (
    "KILN_ADMIN_TOKEN",
    "KILN_FILES_SIGNING_KEY",
    "KILN_SESSION_SIGNING_KEY",
    # The platform's Ed25519 private key for `v1a` webhook signatures (gateway and notifier).
    "KILN_WEBHOOK_SIGNING_KEY",
)

DEFAULT_SANDBOX_DELAY_MS = 10_000
KAFKA_START_TIMEOUT_S = 90.0
TOPICS_TIMEOUT_S = 60.0
TRITON_START_TIMEOUT_S = 180.0
SERVICES_READY_TIMEOUT_S = 240.0  # inference waits for every Triton model; slow on a busy box
STOP_GRACE_S = 15.0
LOG_TAIL_LINES = 40

_T = TypeVar("_T")


class StackError(RuntimeError):
    """Something the stack cannot do by itself; the message says what and where to look."""


# --------------------------------------------------------------------------------------------
# Ports


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


# --------------------------------------------------------------------------------------------
# Service instances


def instance_name(service: str, instance: int = 1) -> str:
    """The component name of one instance of a service: `billing`, `billing-2`, ..."""
    if service not in SERVICES:
        raise StackError(f"unknown service {service!r} (one of {', '.join(SERVICES)})")
    if instance < 1:
        raise StackError(f"{service}: instance numbers start at 1 (not {instance})")
    return service if instance == 1 else f"{service}-{instance}"


def split_instance(component: str) -> tuple[str, int]:
    """(service, instance number) of a component name: `billing-2` -> ("billing", 2),
    `billing` -> ("billing", 1); anything else (kafka, triton) -> (component, 1)."""
    base, sep, number = component.rpartition("-")
    if sep and base in SERVICES and number.isdigit() and int(number) >= 2:
        return base, int(number)
    return component, 1


def instance_counts(instances: Mapping[str, int] | None = None) -> dict[str, int]:
    """How many instances of each service: 1 unless `instances` says otherwise (>= 1)."""
    counts = dict.fromkeys(SERVICES, 1)
    for name, count in (instances or {}).items():
        if name not in SERVICES:
            raise StackError(f"instances: unknown service {name!r} (one of {', '.join(SERVICES)})")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise StackError(f"instances: {name}={count!r} is not a count >= 1")
        counts[name] = count
    return counts


def parse_instances(spec: str) -> dict[str, int]:
    """`inference=2,billing=2` (commas or spaces between) -> {"inference": 2, "billing": 2}."""
    counts: dict[str, int] = {}
    for item in spec.replace(",", " ").split():
        name, sep, raw = item.partition("=")
        if not sep or not raw.strip().isdigit():
            raise StackError(f"instances: {item!r} is not SERVICE=COUNT")
        counts[name.strip()] = int(raw)
    instance_counts(counts)  # validates
    return counts


# --------------------------------------------------------------------------------------------
# Small helpers: env files, logs, processes


def read_env_file(path: Path) -> dict[str, str]:
    """`KEY=value` lines (comments and blank lines skipped, shell quoting undone)."""
    values: dict[str, str] = {}
    if not path.exists():
        return values
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, raw = line.partition("=")
        key = key.strip().removeprefix("export ").strip()
        try:
            parts = shlex.split(raw)
        except ValueError:
            parts = [raw]
        values[key] = parts[0] if parts else ""
    return values


def write_env_file(path: Path, values: Mapping[str, str], header: Sequence[str] = ()) -> bool:
    """Write `KEY=value` lines, readable only by the owner; returns False when unchanged."""
    lines = [f"# {h}" if h else "#" for h in header]
    lines += [f"{key}={shlex.quote(value) if value else ''}" for key, value in values.items()]
    text = "\n".join(lines) + "\n"
    if path.exists() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    os.replace(tmp, path)
    return True


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    if not path.exists():
        return f"({path} does not exist)"
    with path.open("rb") as file:
        file.seek(0, os.SEEK_END)
        size = file.tell()
        file.seek(max(0, size - 64 * 1024))
        data = file.read().decode("utf-8", "replace")
    return "\n".join(data.splitlines()[-lines:])


def render_template(template: Path, values: Mapping[str, str]) -> str:
    text = template.read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    left = sorted(set(re.findall(r"@([A-Z][A-Z0-9_]*)@", text)))
    if left:
        raise StackError(f"{template}: no value for {', '.join(left)}")
    return text


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, process group) of a process from /proc, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[2])


def _has_proc() -> bool:
    return Path("/proc/self/stat").exists()


def group_members(pgid: int) -> list[int]:
    """The live (non-zombie) processes of a process group."""
    if not _has_proc():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass
        return [pgid]
    members = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None and stat[1] == pgid and stat[0] != "Z":
                members.append(int(entry.name))
    return members


def _remove_triton_shm(pid: int) -> None:
    """Triton's Python backend names its shared memory after the PyTriton process
    (`/dev/shm/pytrtion<pid>-...`); a killed server leaves it behind."""
    for region in Path("/dev/shm").glob(f"pytrtion{pid}-*"):
        with contextlib.suppress(OSError):
            region.unlink()


def _run_coro(coro: Coroutine[Any, Any, _T]) -> _T:
    """asyncio.run, also from code that already runs inside an event loop (an async fixture)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = asyncio.run(coro)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, name="stack-coro")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    result: _T = box["result"]
    return result


def apt_packages(path: Path = APT_PACKAGES_FILE) -> list[str]:
    """Package names of apt-packages.txt: whitespace-separated, `#` starts a comment."""
    if not path.exists():
        return []
    names: list[str] = []
    for line in path.read_text().splitlines():
        names += line.split("#", 1)[0].split()
    return names


def dpkg_installed(package: str) -> bool:
    result = subprocess.run(["dpkg", "-s", package], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return False
    status = re.search(r"^Status:\s*(.*)$", result.stdout, re.MULTILINE)
    return status is not None and status.group(1).split()[-1:] == ["installed"]


# --------------------------------------------------------------------------------------------
# The stack


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    pid: int | None
    address: str
    ready: bool

    @property
    def running(self) -> bool:
        return self.pid is not None


class LocalStack:
    """One local Kiln stack rooted at `root` (what `.kiln` is for `make up`).

    `extra_env` goes last into the environment of Triton and of every service (tests use it to
    tune settings). `kafka_libs` lets several stacks share one folder of Kafka jars; `python` is
    the interpreter of the services (default: the workspace's `.venv/bin/python`).

    `instances` runs several processes of a service (`{"inference": 4, "billing": 2}`; 1 for a
    service it does not name). Instance 1 is the service's usual process; instance i >= 2 is the
    component `<service>-<i>` with its own pidfile, log and port (`service_url(name, i)`).
    `scale(name, n)` changes the count of a running stack. The scheduler may run several
    instances, but they add no throughput (see `service_env`).
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
    ) -> None:
        self.root = Path(root).resolve()
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
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LocalStack:
        env = os.environ if env is None else env
        root = Path(env.get("KILN_STACK_DIR") or REPO / ".kiln")
        libs = env.get("KILN_KAFKA_LIBS_DIR")
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
        )

    def _default_python(self) -> Path:
        venv_python = self.repo / ".venv" / "bin" / "python"
        return venv_python if venv_python.exists() else Path(sys.executable)

    # ---------------------------------------------------------------------------- addresses

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

    def log_file(self, name: str) -> Path:
        return self.logs_dir / (f"{name}.out" if name == KAFKA else f"{name}.log")

    def pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

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

    # ---------------------------------------------------------------------------- install

    def install(self) -> list[str]:
        """Install what is missing: the Debian packages, then the Kafka jars; returns what it
        installed (empty when nothing was missing)."""
        return self._install_apt_packages() + self._install_kafka_jars()

    def _install_apt_packages(self) -> list[str]:
        if not APT_PACKAGES_FILE.exists():
            self._echo(f"warning: {APT_PACKAGES_FILE} is missing: no Debian package is checked")
            return []
        wanted = apt_packages()
        if not wanted:
            return []
        if shutil.which("dpkg") is None:
            self._echo(f"not a Debian system: make sure these are installed: {' '.join(wanted)}")
            return []
        missing = [name for name in wanted if not dpkg_installed(name)]
        if not missing:
            return []
        if os.geteuid() != 0:
            raise StackError(
                f"missing Debian packages: {' '.join(missing)}; install them as root: "
                f"apt-get install -y {' '.join(missing)}"
            )
        self._echo(f"installing Debian packages: {' '.join(missing)}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for argv in (
            ["apt-get", "update", "-q"],
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
        ):
            result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                output = "\n".join((result.stdout + result.stderr).splitlines()[-LOG_TAIL_LINES:])
                raise StackError(f"{' '.join(argv)} failed:\n{output}")
        return missing

    def kafka_jars_present(self) -> bool:
        return any(self.kafka_libs.glob(KAFKA_JAR_GLOB))

    def _install_kafka_jars(self) -> list[str]:
        if self.kafka_jars_present():
            return []
        mvn = shutil.which("mvn")
        if mvn is None:
            raise StackError("mvn is missing (it is in deploy/local/apt-packages.txt: run install)")
        self._echo(f"fetching the Kafka jars into {self.kafka_libs} (Maven Central)")
        self.kafka_libs.mkdir(parents=True, exist_ok=True)
        argv = [
            mvn, "-q", "-B", "-f", str(POM_FILE),
            "dependency:copy-dependencies", f"-DoutputDirectory={self.kafka_libs}",
        ]  # fmt: skip
        result = subprocess.run(argv, cwd=self.repo, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not self.kafka_jars_present():
            output = "\n".join((result.stdout + result.stderr).splitlines()[-LOG_TAIL_LINES:])
            raise StackError(f"fetching the Kafka jars failed:\n{output}")
        return [f"Kafka jars ({self.kafka_libs})"]

    # ---------------------------------------------------------------------------- processes

    def _marker(self, name: str) -> str:
        if name == KAFKA:
            return str(self.kafka_properties)
        if name == TRITON:
            return "kiln_inference.triton_server"
        return f"kiln_{split_instance(name)[0]}"

    def _alive(self, name: str, pid: int) -> bool:
        proc = self._procs.get(name)
        if proc is not None and proc.pid == pid:
            return proc.poll() is None
        if not _has_proc():
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True
        stat = _proc_stat(pid)
        if stat is None or stat[0] == "Z":
            return False
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            return False
        return self._marker(name) in cmdline

    def _pidfile_pid(self, name: str) -> int | None:
        try:
            return int(self.pid_file(name).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def pid(self, name: str) -> int | None:
        """The pid of a running component of this stack, or None (a stale pidfile is removed)."""
        pid = self._pidfile_pid(name)
        if pid is None:
            return None
        if self._alive(name, pid):
            return pid
        if not self._orphaned_group(name, pid):  # else kept, for down to stop what is left
            self.pid_file(name).unlink(missing_ok=True)
        return None

    def _orphaned_group(self, name: str, pgid: int) -> bool:
        """Whether processes of a component outlive its dead leader (say, tritonserver after
        its PyTriton parent was killed): members of its group that name it or its leader."""
        if not _has_proc():
            return False
        signs = (self._marker(name), f"pytrtion{pgid}-")
        for member in group_members(pgid):
            try:
                cmdline = Path(f"/proc/{member}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if any(sign in cmdline.decode(errors="replace") for sign in signs):
                return True
        return False

    def running(self, name: str) -> bool:
        return self.pid(name) is not None

    def _reap_orphans(self, name: str) -> None:
        """Stop what is left of a component whose leader died, before starting it again."""
        recorded = self._pidfile_pid(name)
        if recorded is not None and not self._alive(name, recorded):
            if self._orphaned_group(name, recorded):
                self._echo(f"{name}: its process {recorded} died; stopping what it left running")
                self._stop([name])

    def _check_ports_free(self, name: str, ports: Mapping[str, int]) -> None:
        for env_field, port in ports.items():
            if port_accepts(port):
                raise StackError(
                    f"cannot start {name}: port {port} is already taken by another program "
                    f"(stop it, or choose another port with {StackPorts.env_name(env_field)})"
                )

    def _spawn(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> int:
        for folder in (self.logs_dir, self.run_dir):
            folder.mkdir(parents=True, exist_ok=True)
        log_path = self.log_file(name)
        with log_path.open("ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"\n===== {stamp} stack.py starts {name}: {shlex.join(argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env),
                cwd=self.repo,
                start_new_session=True,
            )
        self._procs[name] = proc
        self.pid_file(name).write_text(f"{proc.pid}\n")
        return proc.pid

    def _stop(
        self, names: Sequence[str], sig: int = signal.SIGTERM, grace_s: float = STOP_GRACE_S
    ) -> list[str]:
        """Signal each component's process group, wait `grace_s`, then SIGKILL what is left.

        Returns the names that were running."""
        running: dict[str, int] = {}
        for name in names:
            recorded = self._pidfile_pid(name)
            pid = self.pid(name)
            if pid is None and recorded is not None and self._orphaned_group(name, recorded):
                pid = recorded
            if pid is not None:
                running[name] = pid
        for pid in running.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)
        left = self._wait_groups_gone(running, grace_s)
        if left:
            self._echo(f"{', '.join(left)}: still running after {grace_s:.0f} s, sending SIGKILL")
            for name in left:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(running[name], signal.SIGKILL)
            left = self._wait_groups_gone({name: running[name] for name in left}, 10.0)
            if left:
                raise StackError(f"could not stop {', '.join(left)}")
        if TRITON in running:
            _remove_triton_shm(running[TRITON])
        for name in names:
            self.pid_file(name).unlink(missing_ok=True)
            proc = self._procs.pop(name, None)
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=1)
        return list(running)

    def _wait_groups_gone(self, groups: Mapping[str, int], timeout_s: float) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while True:
            left = []
            for name, pgid in groups.items():
                proc = self._procs.get(name)
                if proc is not None:
                    proc.poll()  # reap our own child, or it stays a zombie of the group
                if group_members(pgid):
                    left.append(name)
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.2)

    def _base_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _setting(self, key: str) -> str | None:
        return self.extra_env.get(key) or os.environ.get(key) or None

    def _gone(self, name: str) -> str:
        proc = self._procs.get(name)
        if proc is not None and proc.returncode is not None:
            return f"exited with code {proc.returncode}"
        return "is not running"

    def _died(self, name: str, what: str) -> StackError:
        return StackError(
            f"{name} {what}; the end of {self.log_file(name)}:\n{tail(self.log_file(name))}"
        )

    # ---------------------------------------------------------------------------- kafka

    def write_kafka_config(self) -> None:
        self.kafka_data.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        properties = render_template(
            KAFKA_PROPERTIES_TEMPLATE,
            {
                "KAFKA_PORT": str(self.ports.kafka),
                "KAFKA_CONTROLLER_PORT": str(self.ports.kafka_controller),
                "KAFKA_DATA_DIR": str(self.kafka_data),
            },
        )
        log4j = render_template(
            KAFKA_LOG4J_TEMPLATE, {"KAFKA_LOG_FILE": str(self.logs_dir / "kafka.log")}
        )
        self.kafka_properties.write_text(properties)
        self.kafka_log4j.write_text(log4j)

    def _java(self) -> str:
        java_home = os.environ.get("JAVA_HOME")
        if java_home and (Path(java_home) / "bin" / "java").exists():
            return str(Path(java_home) / "bin" / "java")
        java = shutil.which("java")
        if java is None:
            raise StackError("java is missing (see deploy/local/apt-packages.txt: run install)")
        return java

    def _java_argv(self, main_class: str, *args: str, jvm: Sequence[str] = ()) -> list[str]:
        return [
            self._java(),
            *jvm,
            f"-Dlog4j.configuration=file:{self.kafka_log4j}",
            "-cp",
            f"{self.kafka_libs}/*",
            main_class,
            *args,
        ]

    def _storage_tool(self, *args: str) -> str:
        argv = self._java_argv("kafka.tools.StorageTool", *args)
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise StackError(
                f"kafka StorageTool {' '.join(args)} failed:\n{result.stdout}{result.stderr}"
            )
        return result.stdout

    def format_kafka_storage(self) -> bool:
        """Format the KRaft log dir unless it already is; returns True when it formatted."""
        if (self.kafka_data / "meta.properties").exists():
            return False
        lines = self._storage_tool("random-uuid").split()
        if not lines:
            raise StackError("kafka StorageTool random-uuid printed nothing")
        cluster_id = lines[-1]
        self._storage_tool("format", "-t", cluster_id, "-c", str(self.kafka_properties))
        self._echo(f"kafka: formatted {self.kafka_data} (cluster id {cluster_id})")
        return True

    def start_kafka(self, timeout_s: float = KAFKA_START_TIMEOUT_S) -> None:
        self._reap_orphans(KAFKA)
        pid = self.pid(KAFKA)
        if pid is not None:
            self._echo(f"kafka: already running (pid {pid}) on {self.kafka_bootstrap}")
            return
        if not self.kafka_jars_present():
            raise StackError(f"no Kafka jars in {self.kafka_libs}: run `stack.py install` first")
        self._check_ports_free(
            KAFKA, {"kafka": self.ports.kafka, "kafka_controller": self.ports.kafka_controller}
        )
        self.write_kafka_config()
        self.format_kafka_storage()
        argv = self._java_argv("kafka.Kafka", str(self.kafka_properties), jvm=KAFKA_JVM_OPTS)
        pid = self._spawn(KAFKA, argv, self._base_env())
        self._echo(f"kafka: starting (pid {pid}) on {self.kafka_bootstrap}")
        deadline = time.monotonic() + timeout_s
        while not port_accepts(self.ports.kafka):
            if not self._alive(KAFKA, pid):
                self.pid_file(KAFKA).unlink(missing_ok=True)
                raise self._died(
                    KAFKA, f"{self._gone(KAFKA)} during start (see also {self.logs_dir}/kafka.log)"
                )
            if time.monotonic() >= deadline:
                raise self._died(KAFKA, f"did not accept connections within {timeout_s:.0f} s")
            time.sleep(0.3)
        self._echo(f"kafka: ready on {self.kafka_bootstrap}")

    def stop_kafka(self, sig: int = signal.SIGTERM, grace_s: float = STOP_GRACE_S) -> bool:
        """Stop the broker alone (its data is kept; the services stay up and reconnect when
        it is back). SIGTERM is a controlled shutdown; True if it ran."""
        return bool(self._stop([KAFKA], sig, grace_s))

    def restart_kafka(self, down_s: float = 0.0, sig: int = signal.SIGTERM) -> None:
        """Stop the broker, leave it down `down_s` seconds, and start it again on the same
        ports and data (chaos tests: the services must ride through it)."""
        self.stop_kafka(sig)
        self._echo(f"kafka: stopped (signal {sig}); back in {down_s:.1f} s")
        if down_s > 0:
            time.sleep(down_s)
        self.start_kafka()

    def create_topics(self, timeout_s: float = TOPICS_TIMEOUT_S) -> list[str]:
        """Create the registry's missing topics (retrying while the new broker settles)."""
        from kiln_runtime.topics import ensure_topics

        raw = self._setting("KILN_TOPIC_PARTITIONS")
        partitions = int(raw) if raw else None
        deadline = time.monotonic() + timeout_s
        created: list[str] = []
        problem = "no answer"
        while True:
            try:
                missing = _run_coro(ensure_topics(self.kafka_bootstrap, partitions=partitions))
            except Exception as exc:  # the broker may still be electing its controller
                problem = repr(exc)
            else:
                if not missing:  # every topic of the registry exists
                    break
                created += [name for name in missing if name not in created]
                problem = f"still missing: {', '.join(missing)}"
            if time.monotonic() >= deadline:
                raise StackError(
                    f"could not create the topics on {self.kafka_bootstrap} within "
                    f"{timeout_s:.0f} s ({problem}); see {self.logs_dir / 'kafka.log'}"
                )
            time.sleep(1.0)
        if created:
            self._echo(f"kafka: created topics {', '.join(created)}")
        return created

    # ---------------------------------------------------------------------------- triton

    def _python_libdir(self) -> str:
        if Path(self.python).resolve() == Path(sys.executable).resolve():
            return str(sysconfig.get_config_var("LIBDIR") or "")
        result = subprocess.run(
            [str(self.python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
            capture_output=True,
            text=True,
            check=False,
        )
        return result.stdout.strip() if result.returncode == 0 else ""

    def triton_env(self) -> dict[str, str]:
        env = self._base_env()
        # PyTriton's Python backend stub needs the interpreter's own libpython first, or it dies
        # with "'_thread.RLock' object has no attribute '_recursion_count'".
        libdir = self._python_libdir()
        if libdir and libdir != "None":
            current = env.get("LD_LIBRARY_PATH", "")
            env["LD_LIBRARY_PATH"] = f"{libdir}:{current}" if current else libdir
        env["KILN_SANDBOX_DELAY_MS"] = str(self.sandbox_delay_ms)
        env["KILN_LOG_LEVEL"] = "INFO"
        env.update(self.extra_env)
        return env

    def triton_ready(self, timeout_s: float = 2.0) -> bool:
        try:
            response = httpx.get(f"{self.triton_url}/v2/health/ready", timeout=timeout_s)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def start_triton(self, timeout_s: float = TRITON_START_TIMEOUT_S) -> None:
        self._reap_orphans(TRITON)
        pid = self.pid(TRITON)
        if pid is None:
            self._check_ports_free(
                TRITON,
                {
                    "triton_http": self.ports.triton_http,
                    "triton_grpc": self.ports.triton_grpc,
                    "triton_metrics": self.ports.triton_metrics,
                },
            )
            argv = [
                str(self.python), "-m", "kiln_inference.triton_server",
                "--http-port", str(self.ports.triton_http),
                "--grpc-port", str(self.ports.triton_grpc),
                "--metrics-port", str(self.ports.triton_metrics),
                "--sandbox-delay-ms", str(self.sandbox_delay_ms),
            ]  # fmt: skip
            pid = self._spawn(TRITON, argv, self.triton_env())
            self._echo(f"triton: starting (pid {pid}) on {self.triton_url}")
        else:
            self._echo(f"triton: already running (pid {pid}) on {self.triton_url}")
        deadline = time.monotonic() + timeout_s
        while not self.triton_ready():
            if not self._alive(TRITON, pid):
                self.pid_file(TRITON).unlink(missing_ok=True)
                raise self._died(TRITON, f"{self._gone(TRITON)} during start")
            if time.monotonic() >= deadline:
                raise self._died(TRITON, f"was not ready within {timeout_s:.0f} s")
            time.sleep(0.5)
        self._echo(f"triton: ready on {self.triton_url}")

    # ---------------------------------------------------------------------------- services

    def secrets(self) -> dict[str, str]:
        """The admin token and the signing keys: made once, then read from secrets.env."""
        values = read_env_file(self.secrets_file)
        changed = False
        for key in SECRET_NAMES:
            if not values.get(key):
                values[key] = (
                    # Ed25519 private key: standard base64 of 32 random bytes.
                    base64.b64encode(secrets.token_bytes(32)).decode()
                    if key == "KILN_WEBHOOK_SIGNING_KEY"
                    else secrets.token_urlsafe(32)
                )
                changed = True
        if changed:
            write_env_file(
                self.secrets_file,
                {k: values[k] for k in SECRET_NAMES},
                header=["Kiln local stack: made once by deploy/local/stack.py, reused by `up`."],
            )
        return values

    def service_env(self, name: str, instance: int = 1) -> dict[str, str]:
        """The environment of one service instance.

        Every instance of a service has the service's name (`KILN_SERVICE_NAME`), so they are
        members of one Kafka consumer group that splits the partitions between them, and they
        share the service's database (data/<name>.db), as the replicas of one deployment share
        theirs: billing, the gateway and the notifier decide under row locks (or SQLite's
        database lock), and so does the scheduler (below). Each instance has its own HTTP port.

        Inference is different: each worker instance has a database of its own
        (data/inference-<i>.db; instance 1 keeps data/inference.db) and its own
        `KILN_WORKER_ID` (`inference-<i>`), as a worker pod with local state would. Its
        database is the worker's private queue, not shared state: the `work_items` it accepted
        from its own partitions, claimed by a select-then-update that only an in-process lock
        guards (two processes on one file could both claim an item and run the job twice), and
        its start-up recovery puts every `running` item back to `pending` (on a shared file, a
        starting worker would re-run the jobs another one is running). Its inbox dedupes the
        events of the partitions it consumes, which Kafka gives to one worker at a time (an
        event redelivered to another worker after a rebalance may run an attempt twice; the
        scheduler and billing keep the first completion). The cost: the work a stopped
        instance accepted waits in its file until that instance runs again or the scheduler's
        lost-worker rule retries it.

        The scheduler: all of its state is in its database and every handler and tick takes
        its write lock (`repository.lock`) before reading, so several instances sharing the
        database act like one that runs their transactions one after another: correct (no
        double dispatch; a redelivered event hits the inbox's unique key), but they add no
        throughput. services/scheduler/README.md (Concurrency) asks for one per database.

        A second instance of a shared-database service starts once instance 1 is ready (its
        schema migration ran), see `_start_instances`.
        """
        service, number = self._resolve(name, instance)
        port = self.service_port(service, number)
        if port is None:
            raise StackError(f"{instance_name(service, number)} has no port yet (start it)")
        keys = self.secrets()
        env = self._base_env()
        database = service if number == 1 or service != "inference" else f"{service}-{number}"
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
                "KILN_HTTP_PORT": str(port),
                "KILN_DATABASE_URL": f"sqlite+aiosqlite:///{self.data_dir}/{database}.db",
            }
        )
        if service == "gateway":
            env["KILN_SESSION_SIGNING_KEY"] = keys["KILN_SESSION_SIGNING_KEY"]
        if service in ("gateway", "notifier"):
            env["KILN_WEBHOOK_SIGNING_KEY"] = keys["KILN_WEBHOOK_SIGNING_KEY"]
        if service == "inference":
            env["KILN_TRITON_GRPC_URL"] = f"127.0.0.1:{self.ports.triton_grpc}"
            env["KILN_SANDBOX_DELAY_MS"] = str(self.sandbox_delay_ms)
            env["KILN_WORKER_ID"] = f"inference-{number}"
        env.update(self.extra_env)
        return env

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

    # ---------------------------------------------------------------------------- demo account

    def bootstrap_demo(self) -> dict[str, str]:
        """Make sure the demo account and its two keys exist; returns what demo.env holds."""
        token = self.secrets()["KILN_ADMIN_TOKEN"]
        saved = read_env_file(self.demo_env_file)
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=self.api_url, headers=headers, timeout=30.0) as client:
            found = _find_account(client, DEMO_EMAIL)
            if found is not None and saved and found["id"] == saved.get("KILN_DEMO_ACCOUNT_ID"):
                account_id = str(found["id"])
                password = saved.get("KILN_DEMO_PASSWORD", "")
                live = saved.get("KILN_DEMO_LIVE_KEY", "")
                sandbox = saved.get("KILN_DEMO_SANDBOX_KEY", "")
                self._echo(f"demo: account {DEMO_EMAIL} ({account_id}) kept")
            else:
                live = sandbox = ""
                if found is None:
                    password = secrets.token_urlsafe(18)
                    response = client.post(
                        "/admin/accounts",
                        json={"email": DEMO_EMAIL, "password": password, "name": DEMO_NAME},
                    )
                    if response.status_code == 409:  # created meanwhile: look it up again
                        found = _find_account(client, DEMO_EMAIL)
                        if found is None:
                            raise StackError(f"demo: {DEMO_EMAIL} exists (409) but is not found")
                if found is None:
                    account_id = str(_data(response, "create the demo account")["id"])
                    _data(
                        client.post(
                            f"/admin/accounts/{account_id}/credits",
                            json={"amount": DEMO_CREDITS, "reason": "demo credits"},
                        ),
                        "grant the demo credits",
                    )
                    self._echo(
                        f"demo: account {DEMO_EMAIL} ({account_id}) created "
                        f"with {DEMO_CREDITS} credits"
                    )
                else:
                    # It exists but demo.env is gone (or names another account): its password
                    # cannot be recovered, so demo.env gets an empty one and fresh keys.
                    account_id = str(found["id"])
                    password = ""
                    self._echo(
                        f"demo: account {DEMO_EMAIL} ({account_id}) exists but "
                        f"{self.demo_env_file} did not describe it: new keys, password unknown"
                    )
            if not live:
                live = _create_key(client, account_id, "demo live", sandbox=False)
            if not sandbox:
                sandbox = _create_key(client, account_id, "demo sandbox", sandbox=True)
        values = {
            "KILN_API_URL": self.api_url,
            "KILN_ADMIN_TOKEN": token,
            "KILN_DEMO_ACCOUNT_ID": account_id,
            "KILN_DEMO_EMAIL": DEMO_EMAIL,
            "KILN_DEMO_PASSWORD": password,
            "KILN_DEMO_LIVE_KEY": live,
            "KILN_DEMO_SANDBOX_KEY": sandbox,
        }
        write_env_file(
            self.demo_env_file,
            values,
            header=[
                "Kiln local stack: the demo account (written by deploy/local/stack.py up).",
                f"Load it into a shell with: set -a; . {self.demo_env_file}; set +a",
            ],
        )
        return values

    # ---------------------------------------------------------------------------- whole stack

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
            self.install()
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

    def down(self) -> list[str]:
        """Stop the services (every instance), then Triton, then Kafka; returns the names that
        were running."""
        with self._locked():
            stopped = self._stop(self.service_components())
            stopped += self._stop([TRITON])
            stopped += self._stop([KAFKA])
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
        for name in self.service_components():
            pid = self.pid(name)
            ready = pid is not None and self.service_ready(name, timeout_s=1.0)
            port = self.service_port(name)
            address = f"http://127.0.0.1:{port}" if port is not None else "-"
            result.append(ComponentStatus(name, pid, address, ready))
        return result

    def processes(self) -> dict[str, list[int]]:
        """The pids of each running component's process group ("kafka", "triton", "gateway",
        "billing-2", ...), its leader first: Triton's holds the PyTriton process, the
        tritonserver binary and its Python backend stubs."""
        result: dict[str, list[int]] = {}
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


def _data(response: httpx.Response, what: str) -> Any:
    if response.status_code // 100 != 2:
        raise StackError(
            f"demo: could not {what}: {response.request.method} {response.request.url} "
            f"answered {response.status_code}: {response.text[:500]}"
        )
    try:
        return response.json()["data"]
    except (ValueError, KeyError, TypeError) as exc:
        answer = response.text[:500]
        raise StackError(f"demo: could not {what}: unexpected answer {answer}") from exc


def _find_account(client: httpx.Client, email: str) -> dict[str, Any] | None:
    response = client.get("/admin/accounts", params={"email": email})
    for account in _data(response, f"look up {email}") or []:
        if isinstance(account, dict) and str(account.get("email", "")).lower() == email:
            return account
    return None


def _create_key(client: httpx.Client, account_id: str, name: str, *, sandbox: bool) -> str:
    response = client.post(
        f"/admin/accounts/{account_id}/keys", json={"name": name, "sandbox": sandbox}
    )
    secret = _data(response, f"create the key {name!r}").get("secret")
    if not secret:
        raise StackError(f"demo: the key {name!r} came back without a secret")
    return str(secret)


# --------------------------------------------------------------------------------------------
# CLI


def local_prometheus(stack: LocalStack) -> Any:
    """deploy/local/prometheus.py's LocalPrometheus for this stack (loaded by path: this file
    also runs as a script and is loaded by path by the tests)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("kiln_local_prometheus", HERE / "prometheus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LocalPrometheus(stack)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="stack.py", description="Kiln's local stack (Kafka, Triton, the five services)."
    )
    parser.add_argument(
        "command",
        choices=("up", "down", "status", "install", "scale"),
        help="up: install, start and bootstrap; down: stop; status: what runs; "
        "install: only the Debian packages and the Kafka jars; "
        "scale: change the instance counts of a running stack (--instances)",
    )
    parser.add_argument(
        "--prometheus",
        action="store_true",
        help="up: also run a Prometheus on :9090 that scrapes every component (prometheus.py)",
    )
    parser.add_argument(
        "--instances",
        default="",
        metavar="SERVICE=N,...",
        help="instances of services, e.g. inference=2,billing=2 (up and scale; default 1 each)",
    )
    args = parser.parse_args(argv)
    try:
        stack = LocalStack.from_env()
        counts = parse_instances(args.instances)
        if args.command in ("up", "scale"):
            stack.instances = instance_counts({**stack.instances, **counts})
        elif counts:
            raise StackError("--instances goes with up or scale")
        if args.command == "up":
            stack.up()
            if args.prometheus:
                local_prometheus(stack).start()
                print(f"  Prometheus:    {local_prometheus(stack).url}")
        elif args.command == "scale":
            if not counts:
                raise StackError("scale needs --instances SERVICE=N,...")
            for name, count in counts.items():
                stack.scale(name, count)
        elif args.command == "down":
            if local_prometheus(stack).stop():
                print("prometheus: stopped")
            stack.down()
        elif args.command == "install":
            done = stack.install()
            print(f"installed: {', '.join(done)}" if done else "install: nothing was missing")
        else:
            for item in stack.status():
                state = "stopped"
                if item.running:
                    state = f"running (pid {item.pid}), {'ready' if item.ready else 'not ready'}"
                print(f"{item.name:<12} {state:<36} {item.address}")
            if stack.demo_env_file.exists():
                print(f"demo account: {stack.demo_env_file}")
    except StackError as exc:
        print(f"stack.py {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
