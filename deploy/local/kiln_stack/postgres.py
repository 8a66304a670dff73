"""PostgreSQL for a stack: Debian's server binaries, one cluster per stack, a database per service.

`PostgresServer` is one cluster driven by `initdb` and `pg_ctl` (tests use it alone as a throwaway
cluster). `PostgresMixin` runs one for a stack whose `database` is "postgresql": the cluster in
`<root>/postgres`, a role `kiln` whose password is made once (secrets.env), one database per
service instance, and each service handed a plain URL, `postgresql://kiln:…@127.0.0.1:<port>/billing`,
as an operator hands one to a deployment.

PostgreSQL refuses to run as root. As root (CI, the dev container) the binaries run as the
`postgres` user through `runuser`; the cluster's folder then belongs to that user, and when that
user cannot reach the stack's folder (pytest's temporary folders are private to root) the
cluster lives in a folder of its own under the system's temporary folder, which
`<root>/postgres` links to, and `discard_postgres` removes it with the stack.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from kiln_stack.components import POSTGRES
from kiln_stack.errors import StackError
from kiln_stack.processes import ProcessesMixin, tail
from kiln_stack.secrets import SecretsMixin

PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
POSTGRES_START_TIMEOUT_S = 120.0
SERVER_USER = "postgres"  # the OS user the binaries run as when we are root

# Settings of every cluster made here. synchronous_commit=off is the counterpart of the SQLite
# files' synchronous=NORMAL: a crash of the machine (not of a process) may lose the last
# transactions, never corrupt the cluster, and a lost transaction is harmless to Kiln (event ids
# are stable and handlers idempotent: docs/architecture.md, "Exactly once, in effect").
# No Unix socket: clients come over TCP on 127.0.0.1 only (a socket path in a deep temporary
# folder can exceed the 107 bytes a socket name may have).
BASE_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_directories": "''",
    "max_connections": "300",
    "shared_buffers": "64MB",
    "synchronous_commit": "off",
    "log_min_messages": "warning",
    "log_line_prefix": "'%m [%p] %d '",
}


def find_pg_bin() -> Path | None:
    """The newest PostgreSQL's bin folder (KILN_PG_BIN overrides), or None when absent."""
    configured = os.environ.get("KILN_PG_BIN")
    if configured:
        return Path(configured) if (Path(configured) / "initdb").exists() else None

    def version(path: Path) -> int:
        found = re.search(r"/(\d+)/bin$", str(path))
        return int(found.group(1)) if found else 0

    candidates = sorted(
        (p for p in Path("/").glob(PG_BIN_GLOB.lstrip("/")) if (p / "initdb").exists()),
        key=version,
    )
    if candidates:
        return candidates[-1]
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def _as_root() -> bool:
    return os.geteuid() == 0


def hand_to_server_user(path: Path) -> None:
    """As root, give `path` to the user the server runs as (it must own its data folder)."""
    if _as_root():
        entry = pwd.getpwnam(SERVER_USER)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def server_user_reaches(path: Path) -> bool:
    """Whether the server's user can write in `path` (every folder above it searchable)."""
    if not _as_root():
        return os.access(path, os.W_OK | os.X_OK)
    result = subprocess.run(
        ["runuser", "-u", SERVER_USER, "--", "test", "-w", str(path), "-a", "-x", str(path)],
        capture_output=True,
        check=False,
    )
    return result.returncode == 0


@dataclass
class PostgresServer:
    """One PostgreSQL cluster in `root` (data/, postgres.log), served on 127.0.0.1:`port`.

    `password` None: trust authentication (throwaway test clusters); else the superuser `user`
    logs in with it (scram-sha-256), as an operator's role would."""

    bin_dir: Path
    root: Path
    port: int
    user: str = "postgres"
    password: str | None = None
    settings: Mapping[str, str] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    def run(self, *argv: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / argv[0]), *argv[1:]]
        if _as_root():
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        result = subprocess.run(
            command, capture_output=True, text=True, check=False, timeout=timeout_s
        )
        if result.returncode != 0:
            raise StackError(
                f"{' '.join(command)} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}\nthe end of {self.log_file}:\n"
                f"{tail(self.log_file)}"
            )
        return result

    # --- the cluster ----------------------------------------------------------------------------

    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self) -> None:
        """`initdb` the cluster (UTF-8, C locale) and write its settings."""
        self.root.mkdir(parents=True, exist_ok=True)
        hand_to_server_user(self.root)
        argv = ["initdb", "-D", str(self.data_dir), "-U", self.user, "-E", "UTF8"]
        argv += ["--locale=C", "--no-sync"]
        pwfile = self.root / "initdb.pw"
        if self.password is None:
            argv += ["-A", "trust"]
        else:
            fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as file:
                file.write(self.password + "\n")
            hand_to_server_user(pwfile)
            argv += ["--auth-host=scram-sha-256", "--auth-local=peer", f"--pwfile={pwfile}"]
        try:
            self.run(*argv)
        finally:
            pwfile.unlink(missing_ok=True)
        conf = self.data_dir / "postgresql.conf"
        lines = [f"{key} = {value}" for key, value in {**BASE_SETTINGS, **self.settings}.items()]
        with conf.open("a") as file:
            file.write("\n# Kiln's stack (deploy/local/kiln_stack/postgres.py)\n")
            file.write("\n".join(lines) + "\n")

    def pid(self) -> int | None:
        """The postmaster's pid while it runs (from its own postmaster.pid), else None."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError, PermissionError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            return None
        return pid if str(self.data_dir) in cmdline else None

    def start(self, timeout_s: float = POSTGRES_START_TIMEOUT_S) -> None:
        """Start the cluster on `port` and wait until it accepts connections."""
        if not self.initialized():
            self.init()
        if self.pid() is not None:
            return
        self.run(
            "pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file),
            "-o", f"-p {self.port}", "-w", "-t", str(int(timeout_s)), "start",
            timeout_s=timeout_s + 30,
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> bool:
        """Stop the cluster (`fast`: roll back open sessions; `immediate`: like a crash);
        returns whether it ran."""
        if self.pid() is None:
            return False
        self.run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60", "stop")
        return True

    # --- databases ------------------------------------------------------------------------------

    def url(self, database: str = "postgres", driver: str | None = None) -> str:
        """A plain URL (`postgresql://user:password@127.0.0.1:port/database`), as operators
        are given, or one naming a driver (`postgresql+asyncpg://…`)."""
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        credentials = quote(self.user, safe="")
        if self.password is not None:
            credentials += ":" + quote(self.password, safe="")
        return f"{scheme}://{credentials}@127.0.0.1:{self.port}/{database}"

    def create_databases(self, names: Sequence[str]) -> list[str]:
        """Create each database that does not exist yet; returns those it created."""
        import psycopg  # the stack runs in the workspace, which has Kiln's PostgreSQL driver

        made = []
        with psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=self.user,
            password=self.password,
            dbname="postgres",
            autocommit=True,
        ) as connection:
            for name in names:
                found = connection.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
                ).fetchone()
                if found is None:
                    quoted = psycopg.sql.Identifier(name)
                    connection.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(quoted))
                    made.append(name)
        return made


def database_name(component: str) -> str:
    """A service instance's database: `billing`, `inference_2` (no dash: no quoting needed)."""
    return component.replace("-", "_")


class PostgresMixin(SecretsMixin, ProcessesMixin):
    """The stack's PostgreSQL cluster, when its `database` is "postgresql"."""

    @property
    def uses_postgres(self) -> bool:
        return self.database == "postgresql"

    @property
    def postgres_link(self) -> Path:
        return self.root / "postgres"

    def postgres_server(self) -> PostgresServer:
        bin_dir = find_pg_bin()
        if bin_dir is None:
            raise StackError(
                "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): "
                "`make install` installs Debian's postgresql (deploy/local/apt-packages.txt)"
            )
        return PostgresServer(
            bin_dir=bin_dir,
            root=self._postgres_root(),
            port=self.ports.postgres,
            user="kiln",
            password=self.secrets()["KILN_POSTGRES_PASSWORD"],
        )

    def _postgres_root(self) -> Path:
        """`<root>/postgres`, or the folder it links to (see the module's docstring)."""
        link = self.postgres_link
        if link.is_symlink():
            return link.resolve()
        if link.is_dir():
            return link
        self.root.mkdir(parents=True, exist_ok=True)
        link.mkdir()
        hand_to_server_user(link)
        if server_user_reaches(link):
            return link
        link.rmdir()
        outside = Path(tempfile.mkdtemp(prefix="kiln-postgres-"))
        hand_to_server_user(outside)
        link.symlink_to(outside, target_is_directory=True)
        return outside

    def postgres_pid(self) -> int | None:
        link = self.postgres_link
        if not (link.is_dir() or link.is_symlink()) or find_pg_bin() is None:
            return None
        return self.postgres_server().pid()

    def start_postgres(self) -> None:
        server = self.postgres_server()
        if server.pid() is not None:
            self._echo(f"{POSTGRES}: already running (pid {server.pid()}) on :{server.port}")
            return
        self._check_ports_free(POSTGRES, {"postgres": server.port})
        if not server.initialized():
            self._echo(f"{POSTGRES}: making a cluster in {server.root}")
            server.init()
        server.start()
        self._echo(f"{POSTGRES}: ready (pid {server.pid()}) on 127.0.0.1:{server.port}")

    def stop_postgres(self, mode: str = "fast") -> bool:
        if self.postgres_pid() is None:
            return False
        return self.postgres_server().stop(mode)

    def ensure_database(self, name: str) -> None:
        """The database `name` exists (a service's is made before its first start)."""
        self.postgres_server().create_databases([name])

    def discard_postgres(self) -> None:
        """Remove a cluster kept outside the stack's folder (after `down`): what `rm -r` of the
        stack's folder would not reach. Its log is kept with the others (logs/postgres.log)."""
        link = self.postgres_link
        if link.is_symlink():
            outside = link.resolve()
            with contextlib.suppress(OSError):
                self.logs_dir.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(outside / "postgres.log", self.logs_dir / "postgres.log")
            link.unlink()
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(outside)
