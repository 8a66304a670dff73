"""Databases: SQLite by default, PostgreSQL by URL (docs/architecture.md, "Storage").

The event runtime works on a *synchronous* SQLAlchemy engine: a whole batch of events is
handled in one transaction inside one worker thread, one thread hop per batch instead of
aiosqlite's three or four per statement. `Database` owns that engine and two executors:

* the writer: one thread that runs every write transaction of the process, one after another.
  SQLite takes one writer at a time anyway, so the process never waits on its own lock, and
  callers that arrive while a transaction runs are committed together by `GroupCommit`.
* readers: a few threads for read-only queries on their own connections (WAL lets them read
  while the writer writes).

An async engine (aiosqlite or asyncpg) is still there for code that reads and writes rarely
(key management, admin routes); it points at the same database. On PostgreSQL both engines take
the URL an operator is given, libpq's parameters included (`async_connection`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine.url import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from kiln_runtime.metrics import DB_STATEMENTS, DB_TRANSACTIONS

log = logging.getLogger(__name__)

SessionFactory = async_sessionmaker[AsyncSession]
T = TypeVar("T")
WRITE_INTENT = "kiln_write_intent"

# Driver names for the two engines, by backend. Operators are handed plain URLs
# (`postgresql://user:pw@host/db` by CloudNativePG, `postgres://…` by older tools,
# `sqlite:///path`); Kiln picks the drivers.
_SYNC_DRIVERS = {"sqlite": "pysqlite", "postgresql": "psycopg"}
_ASYNC_DRIVERS = {"sqlite": "aiosqlite", "postgresql": "asyncpg"}

# The URL's query is libpq's connection parameters (psycopg hands them to libpq as they are).
# asyncpg's DSN parser implements these with libpq's meaning; `host` and `port` SQLAlchemy's
# asyncpg dialect reads itself (several hosts, a socket folder).
_ASYNCPG_DSN_PARAMETERS = frozenset(
    {
        "sslmode", "sslcert", "sslkey", "sslrootcert", "sslcrl", "sslpassword",
        "sslnegotiation", "ssl_min_protocol_version", "ssl_max_protocol_version",
        "target_session_attrs", "krbsrvname", "gsslib", "passfile", "service",
        "application_name",
    }
)  # fmt: skip
_SQLALCHEMY_URL_PARAMETERS = frozenset({"host", "port"})

# Kiln's PostgreSQL sessions run in UTC, whatever the server's TimeZone: `date(created_at)` is the
# UTC day, as on SQLite (which holds UTC), and psycopg hands timestamps back in UTC. A URL's own
# `options=-c timezone=…` comes after these, so an operator's choice wins.
SESSION_SETTINGS = {"timezone": "UTC"}


class UnsupportedDatabase(ValueError):
    """A database URL whose backend Kiln does not run on."""


def _with_driver(url: str | URL, drivers: dict[str, str]) -> URL:
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "postgres":  # the old alias some tools still hand out
        backend = "postgresql"
    if backend not in drivers:
        raise UnsupportedDatabase(
            f"database URL {parsed.render_as_string(hide_password=True)!r}: Kiln runs on "
            f"SQLite and PostgreSQL only"
        )
    return parsed.set(drivername=f"{backend}+{drivers[backend]}")


def sync_url(url: str | URL) -> URL:
    """`url` with Kiln's synchronous driver (pysqlite, psycopg), whatever driver it named."""
    return _with_driver(url, _SYNC_DRIVERS)


def async_url(url: str | URL) -> URL:
    """`url` with Kiln's asynchronous driver (aiosqlite, asyncpg), whatever driver it named."""
    return _with_driver(url, _ASYNC_DRIVERS)


def _last(value: str | tuple[str, ...]) -> str:
    """A query parameter's value; libpq takes the last of a parameter given twice."""
    return value[-1] if isinstance(value, tuple) else value


def libpq_url(parsed: URL) -> URL:
    """A psycopg URL with Kiln's session settings ahead of the URL's own `options`."""
    ours = " ".join(f"-c {name}={value}" for name, value in SESSION_SETTINGS.items())
    theirs = parsed.query.get("options")
    options = f"{ours} {_last(theirs)}" if theirs else ours
    return parsed.update_query_dict({"options": options})


def _server_settings(options: str) -> dict[str, str] | None:
    """libpq's `options` (`-c name=value` / `--name=value`, space-separated) as asyncpg's
    server settings; None when it holds anything else."""
    settings: dict[str, str] = {}
    tokens = iter(shlex.split(options))
    for token in tokens:
        if token == "-c":
            token = "-c" + next(tokens, "")
        if token.startswith("-c"):
            setting = token[2:]
        elif token.startswith("--"):
            setting = token[2:]
        else:
            return None
        name, sep, value = setting.partition("=")
        if not sep or not name:
            return None
        settings[name.replace("-", "_")] = value
    return settings


def async_connection(url: str | URL) -> tuple[URL, dict[str, Any]]:
    """The async engine's URL (with its driver) and its `connect_args`.

    SQLAlchemy's asyncpg dialect hands every query parameter to `asyncpg.connect` as a keyword,
    so libpq's parameters fail there (`?sslmode=require`: "connect() got an unexpected keyword
    argument 'sslmode'"). asyncpg's own DSN parser implements them with libpq's meaning, so they
    go to it as a DSN of parameters alone (`postgresql://?sslmode=require&sslrootcert=…`);
    `connect_timeout` becomes asyncpg's `timeout`, `options=-c name=value` its server settings
    (after Kiln's own, `SESSION_SETTINGS`).
    A URL asking for what asyncpg cannot do (`channel_binding`, `gssencmode`, keepalives, …)
    gets psycopg's async mode instead: libpq itself, exactly as the sync engine reads it."""
    parsed = async_url(url)
    if parsed.get_backend_name() != "postgresql":
        return parsed, {}
    kept: dict[str, Any] = {}
    dsn: dict[str, str] = {}
    connect_args: dict[str, Any] = {"server_settings": dict(SESSION_SETTINGS)}
    for name, given in parsed.query.items():
        value = _last(given)
        if name in _SQLALCHEMY_URL_PARAMETERS:
            kept[name] = value
        elif name in _ASYNCPG_DSN_PARAMETERS:
            dsn[name] = value
        elif name == "connect_timeout" and value.isdigit():
            if int(value) > 0:  # libpq: 0 waits for ever, as asyncpg's None
                connect_args["timeout"] = float(value)
        elif name == "options" and (settings := _server_settings(value)) is not None:
            connect_args["server_settings"].update(settings)
        else:
            return libpq_url(parsed.set(drivername="postgresql+psycopg")), {}
    if dsn:
        connect_args["dsn"] = "postgresql://?" + urlencode(dsn)
    return parsed.set(query=kept), connect_args


def upsert_insert(dialect: str) -> Any:
    """The `insert` of the database's dialect, the one with `on_conflict_do_nothing` and
    `on_conflict_do_update` (PostgreSQL's and SQLite's take the same arguments)."""
    return postgresql_insert if dialect == "postgresql" else sqlite_insert


def is_sqlite(url: str | URL) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _prepare_sqlite_file(url: URL) -> None:
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)


def _sqlite_pragmas(busy_timeout_s: float) -> Callable[[Any, Any], None]:
    def apply(dbapi_conn: Any, _record: Any) -> None:
        # WAL lets readers read while the writer writes. synchronous=NORMAL survives a process
        # crash (what the chaos tests do); a power loss may roll back the last transactions,
        # which is harmless because event ids are stable and every handler is idempotent
        # (docs/architecture.md, "Exactly once"). The busy timeout absorbs the write-lock waits
        # between processes that share a database file.
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    return apply


def make_sync_engine(url: str | URL, *, busy_timeout_s: float = 30.0) -> Engine:
    parsed = sync_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(libpq_url(parsed), pool_pre_ping=True, pool_size=8, max_overflow=8)
    _prepare_sqlite_file(parsed)
    # pysqlite's own transaction handling issues BEGIN lazily, at the first write; SQLAlchemy's
    # documented fix is to take BEGIN over ourselves, so a transaction that reads then writes
    # holds its snapshot from the start (no "upgrade" of a read snapshot under a writer).
    engine = create_engine(
        parsed,
        connect_args={"timeout": busy_timeout_s, "check_same_thread": False},
        pool_size=8,
        max_overflow=8,
    )
    event.listen(engine, "connect", _sqlite_pragmas(busy_timeout_s))

    @event.listens_for(engine, "connect")
    def _no_pysqlite_begin(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # A write transaction takes the write lock at BEGIN: a deferred one that read first
        # could not take it later once another process committed (SQLITE_BUSY_SNAPSHOT, which
        # no busy timeout absorbs).
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get(WRITE_INTENT) else "BEGIN")

    return engine


def make_async_engine(url: str | URL, *, busy_timeout_s: float = 30.0) -> AsyncEngine:
    parsed, connect_args = async_connection(url)
    if parsed.get_backend_name() != "sqlite":
        return create_async_engine(parsed, pool_pre_ping=True, connect_args=connect_args)
    _prepare_sqlite_file(parsed)
    engine = create_async_engine(parsed, connect_args={"timeout": busy_timeout_s})
    event.listen(engine.sync_engine, "connect", _sqlite_pragmas(busy_timeout_s))
    return engine


def make_engine(url: str | URL) -> AsyncEngine:
    """The async engine alone (tests and tools that only need it)."""
    return make_async_engine(url)


def make_session_factory(engine: AsyncEngine) -> SessionFactory:
    return async_sessionmaker(engine, expire_on_commit=False)


@contextlib.asynccontextmanager
async def transaction(sessions: SessionFactory) -> AsyncIterator[AsyncSession]:
    """An async session whose work commits on success and rolls back on any error."""
    async with sessions() as session, session.begin():
        yield session


def count_statements(engine: Engine, service: str) -> None:
    """Count SQL statements and write transactions (what bench `hops` prints per job)."""
    statements = DB_STATEMENTS.labels(service)
    writes = DB_TRANSACTIONS.labels(service, "write")
    reads = DB_TRANSACTIONS.labels(service, "read")

    @event.listens_for(engine, "before_cursor_execute")
    def _statement(
        conn: Connection, _cursor: Any, statement: str, *_args: Any, **_kwargs: Any
    ) -> None:
        statements.inc()
        head = statement.lstrip()[:6].upper()
        if head in ("INSERT", "UPDATE", "DELETE"):
            conn.info["kiln_wrote"] = True

    @event.listens_for(engine, "commit")
    def _commit(conn: Connection) -> None:
        (writes if conn.info.pop("kiln_wrote", False) else reads).inc()

    @event.listens_for(engine, "rollback")
    def _rollback(conn: Connection) -> None:
        conn.info.pop("kiln_wrote", None)


class Database:
    """One service's database: the sync engine with its writer and reader threads, and the
    async engine for rarely used paths."""

    def __init__(
        self,
        url: str,
        *,
        service: str,
        busy_timeout_s: float = 30.0,
        readers: int = 4,
    ) -> None:
        self.url = url
        self.service = service
        self.engine = make_sync_engine(url, busy_timeout_s=busy_timeout_s)
        count_statements(self.engine, service)
        self.async_engine = make_async_engine(url, busy_timeout_s=busy_timeout_s)
        self.sessions = make_session_factory(self.async_engine)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{service}-writer")
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix=f"{service}-db")
        self._writer_thread: int | None = None
        self._writer.submit(self._remember_writer).result()

    def _remember_writer(self) -> None:
        self._writer_thread = threading.get_ident()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def in_writer(self) -> bool:
        return threading.get_ident() == self._writer_thread

    async def write(self, work: Callable[[Connection], T]) -> T:
        """Run `work` in one write transaction on the writer thread; commit when it returns."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer, self.write_now, work)

    def write_now(self, work: Callable[[Connection], T]) -> T:
        """`write` for code already on the writer thread (or in a test without a loop)."""
        with self.engine.connect() as connection:
            connection.info[WRITE_INTENT] = True
            try:
                with connection.begin():
                    return work(connection)
            finally:
                connection.info.pop(WRITE_INTENT, None)

    async def on_writer(self, work: Callable[[], T]) -> T:
        """Run `work` on the writer thread without opening a transaction for it."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer, work)

    async def read(self, work: Callable[[Connection], T]) -> T:
        """Run `work` on a reader thread in a read-only transaction."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self.read_now, work)

    def read_now(self, work: Callable[[Connection], T]) -> T:
        with self.engine.connect() as connection:
            try:
                return work(connection)
            finally:
                connection.rollback()

    @contextlib.contextmanager
    def connect(self) -> Iterator[Connection]:
        """A write transaction on the calling thread (migrations, tests, tools)."""
        with self.engine.connect() as connection:
            connection.info[WRITE_INTENT] = True
            try:
                with connection.begin():
                    yield connection
            finally:
                connection.info.pop(WRITE_INTENT, None)

    async def reachable(self) -> bool:
        try:
            return bool(await self.read(lambda c: c.execute(text("SELECT 1")).scalar() == 1))
        except Exception:
            return False

    async def dispose(self) -> None:
        self._writer.shutdown(wait=True, cancel_futures=False)
        self._readers.shutdown(wait=True, cancel_futures=True)
        self.engine.dispose()
        await self.async_engine.dispose()


async def database_reachable(engine: AsyncEngine) -> bool:
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False
