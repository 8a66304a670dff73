"""Telling a failure that passes from one that will come back (docs/architecture.md, "Dead
letters").

A *transient* failure (the database is locked or away, the broker is away) says nothing about
the event: the batch is rolled back and tried again, with backoff, for as long as it takes,
and the partition does not move meanwhile. Anything else may be the event's fault: the batch is
split until the failing event is found, that event is tried a few more times on its own, and if
it still fails it goes to the dead-letter topic with its error.
"""

from __future__ import annotations

import random
import sqlite3
from dataclasses import dataclass

from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, NodeNotReadyError
from sqlalchemy import exc as sa_exc


class TransientError(Exception):
    """Raise from a handler when the failure is not the event's fault and will pass."""


class PoisonEvent(Exception):
    """Raise from a handler when the event can never be handled: it goes straight to the
    dead-letter topic, without further attempts."""


_TRANSIENT_SQLITE_CODES = {
    sqlite3.SQLITE_BUSY,
    sqlite3.SQLITE_LOCKED,
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_FULL,
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_PROTOCOL,
}


def is_transient(exc: BaseException) -> bool:
    """True for failures of the database or the broker rather than of the event."""
    if isinstance(exc, TransientError):
        return True
    if isinstance(exc, PoisonEvent):
        return False
    if isinstance(exc, KafkaConnectionError | KafkaTimeoutError | NodeNotReadyError):
        return True
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        original = exc.orig
        if isinstance(original, sqlite3.OperationalError):
            code = getattr(original, "sqlite_errorcode", None)
            if code is not None:
                return bool(code & 0xFF in _TRANSIENT_SQLITE_CODES)
            text = str(original).lower()
            return "locked" in text or "busy" in text or "disk i/o" in text
        # PostgreSQL: lost connections, serialization failures, lock timeouts, shutdowns.
        sqlstate = _sqlstate(exc)
        if sqlstate is not None:
            return sqlstate[:2] in ("08", "40", "53", "57") or sqlstate == "55P03"
        return isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError)
    if isinstance(exc, sa_exc.DisconnectionError | sa_exc.TimeoutError):
        return True
    return isinstance(exc, OSError)


# PostgreSQL's transient failures that can belong to one statement rather than to the
# database: lock not available (a lock timeout), deadlock, serialization failure, statement
# timeout or cancel.
_ONE_WRITE_SQLSTATES = frozenset({"55P03", "40P01", "40001", "57014"})


def may_be_one_writes(exc: BaseException) -> bool:
    """True for a transient failure that may be one write's own, which that write alone would
    meet again while the others could commit: a `TransientError` the write raised, or one of
    PostgreSQL's lock and serialization failures. SQLite's busy or locked errors and a lost
    connection belong to the whole database."""
    if isinstance(exc, TransientError):
        return True
    return _sqlstate(exc) in _ONE_WRITE_SQLSTATES


def _sqlstate(exc: BaseException) -> str | None:
    """PostgreSQL's SQLSTATE of a database error (asyncpg's `sqlstate`, psycopg's `pgcode`)."""
    if not isinstance(exc, sa_exc.DBAPIError):
        return None
    original = exc.orig
    sqlstate = getattr(original, "sqlstate", None) or getattr(original, "pgcode", None)
    return sqlstate if isinstance(sqlstate, str) else None


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter, capped."""

    base_s: float = 0.1
    cap_s: float = 5.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.cap_s, self.base_s * 2 ** max(attempt - 1, 0)))


def describe(exc: BaseException, limit: int = 1000) -> str:
    """`Type: message`, short enough for a Kafka header."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[: limit - 1] + "…"
