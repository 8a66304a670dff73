"""A throwaway PostgreSQL cluster for tests: the local stack's `PostgresServer`
(deploy/local/kiln_stack/postgres.py: Debian's binaries, `initdb` and `pg_ctl`, run as the
`postgres` user through `runuser` when we are root) in a temporary folder of its own on a free
port, trust authentication, stopped with `pg_ctl stop -m immediate` and removed at the end."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from tests.stack_support import free_port, stack

find_pg_bin = stack.find_pg_bin
# A throwaway cluster need not survive a crash of the machine: no flush to disk at all.
FAST = {"fsync": "off", "full_page_writes": "off"}


@dataclass
class PostgresCluster:
    server: stack.PostgresServer

    @property
    def root(self) -> Path:
        root: Path = self.server.root
        return root

    @property
    def port(self) -> int:
        port: int = self.server.port
        return port

    @property
    def user(self) -> str:
        user: str = self.server.user
        return user

    def url(self, database: str = "postgres", driver: str = "asyncpg") -> str:
        url: str = self.server.url(database, driver)
        return url

    def new_database(self, prefix: str, driver: str = "asyncpg") -> str:
        """The URL of a fresh, empty database named `prefix` and a random suffix."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=self.user, dbname="postgres", autocommit=True
        ) as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name, driver)

    @classmethod
    def start(cls, bin_dir: Path, **options: object) -> PostgresCluster:
        """`options` go to `PostgresServer` (say, more `settings` or a `password`)."""
        root = Path(tempfile.mkdtemp(prefix="kiln-pg-"))
        settings = {**FAST, **options.pop("settings", {})}  # type: ignore[dict-item]
        server = stack.PostgresServer(
            bin_dir=bin_dir, root=root, port=free_port(), settings=settings, **options
        )
        try:
            server.start()
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        return cls(server)

    def stop(self) -> None:
        try:
            self.server.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
