"""Where rate-limit counters live: hits per (bucket, fixed window), counted atomically.

- `SharedCounterStore` (the default): counted in this process at once and added to one row per
  (bucket, window) of the gateway's database every `sync_s` (one transaction for every bucket
  hit meanwhile), so that the replicas sharing the database count together without a write per
  request; a replica learns the others' hits at each sync. Between syncs the replicas together
  may admit past a limit what the others admitted since (at most `sync_s` of their traffic);
- `DatabaseCounterStore`: a write per hit, exact across replicas (kept for comparison);
- `MemoryCounterStore`: a dict in this process; exact for one process, per replica otherwise.
"""

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from sqlalchemy import bindparam, delete, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from kiln_gateway.tables import RateLimitWindow
from kiln_runtime.db import Database, upsert_insert

log = logging.getLogger(__name__)


class CounterStore(Protocol):
    """Counts hits per (bucket, fixed window). `hit` must be atomic: the count it returns
    includes this hit and every earlier one, whichever process made them."""

    async def hit(self, bucket: str, start: int, window_s: int, amount: int = 1) -> int: ...

    async def count(self, bucket: str, start: int) -> int: ...

    async def clear(self, bucket: str, start: int) -> None: ...


class MemoryCounterStore:
    """Counters in this process: exact for one gateway process (no await between the read and
    the write), but each replica counts on its own."""

    def __init__(self, prune_every_s: int = 10) -> None:
        self._counts: dict[tuple[str, int], tuple[int, int]] = {}  # -> (count, window end)
        self._prune_every_s = prune_every_s
        self._next_prune = 0

    async def hit(self, bucket: str, start: int, window_s: int, amount: int = 1) -> int:
        if start >= self._next_prune:  # windows that ended before this one began
            self._next_prune = start + self._prune_every_s
            for key in [k for k, (_, end) in self._counts.items() if end <= start]:
                del self._counts[key]
        count = self._counts.get((bucket, start), (0, 0))[0] + amount
        self._counts[(bucket, start)] = (count, start + window_s)
        return count

    async def count(self, bucket: str, start: int) -> int:
        return self._counts.get((bucket, start), (0, 0))[0]

    async def clear(self, bucket: str, start: int) -> None:
        self._counts.pop((bucket, start), None)


def _increment(dialect: str) -> Any:
    return (
        upsert_insert(dialect)(RateLimitWindow)
        .values(
            bucket=bindparam("bucket"),
            window_start=bindparam("start"),
            hits=bindparam("amount"),
            expires_at=bindparam("expires_at"),
        )
        .on_conflict_do_update(
            index_elements=[RateLimitWindow.bucket, RateLimitWindow.window_start],
            set_={"hits": RateLimitWindow.hits + bindparam("added")},
        )
        .returning(RateLimitWindow.hits)
    )


# Built once per dialect: building the statement cost more than running it, once per bucket
# at every sync.
_INCREMENTS = {dialect: _increment(dialect) for dialect in ("sqlite", "postgresql")}


def increment_statement(
    dialect: str, bucket: str, start: int, expires_at: int, amount: int = 1
) -> tuple[Any, dict[str, Any]]:
    """`INSERT … ON CONFLICT (bucket, window_start) DO UPDATE SET hits = hits + amount
    RETURNING hits`: one atomic statement on SQLite (3.35+) and PostgreSQL alike; the
    statement and its parameters."""
    params = {
        "bucket": bucket,
        "start": start,
        "amount": amount,
        "expires_at": expires_at,
        "added": amount,
    }
    return _INCREMENTS["postgresql" if dialect == "postgresql" else "sqlite"], params


class DatabaseCounterStore:
    """Counters as rows of `rate_limit_windows`, shared by every replica on the database.

    Core statements on a connection (no ORM session): one short transaction per hit. On
    PostgreSQL that transaction commits asynchronously (`synchronous_commit = off`, for it
    alone): a counter increment lost in a crash only lets one more request through."""

    def __init__(self, engine: Callable[[], AsyncEngine], prune_every_s: int = 60) -> None:
        # A callable: the runtime makes its engine only when it starts.
        self._engine = engine
        self._prune_every_s = prune_every_s
        self._next_prune = 0

    async def hit(self, bucket: str, start: int, window_s: int, amount: int = 1) -> int:
        engine = self._engine()
        dialect = engine.dialect.name
        async with engine.begin() as conn:
            if dialect == "postgresql":
                await conn.execute(text("SET LOCAL synchronous_commit TO OFF"))
            statement, params = increment_statement(
                dialect, bucket, start, start + window_s, amount
            )
            count = int((await conn.execute(statement, params)).scalar_one())
        if start >= self._next_prune:  # now and then, the rows of windows that have ended
            self._next_prune = start + self._prune_every_s
            async with engine.begin() as conn:
                await conn.execute(
                    delete(RateLimitWindow).where(RateLimitWindow.expires_at <= start)
                )
        return count

    async def count(self, bucket: str, start: int) -> int:
        async with self._engine().connect() as conn:
            hits = await conn.scalar(
                select(RateLimitWindow.hits).where(
                    RateLimitWindow.bucket == bucket, RateLimitWindow.window_start == start
                )
            )
        return int(hits or 0)

    async def clear(self, bucket: str, start: int) -> None:
        async with self._engine().begin() as conn:
            await conn.execute(
                delete(RateLimitWindow).where(
                    RateLimitWindow.bucket == bucket, RateLimitWindow.window_start == start
                )
            )


def _hits(connection: Any, keys: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
    rows = connection.execute(
        select(RateLimitWindow.bucket, RateLimitWindow.window_start, RateLimitWindow.hits).where(
            RateLimitWindow.bucket.in_(sorted({bucket for bucket, _ in keys}))
        )
    )
    wanted = set(keys)
    return {(b, w): int(h) for b, w, h in rows if (b, w) in wanted}


class SharedCounterStore:
    """See the module's docstring. `run()` syncs until cancelled."""

    def __init__(
        self, database: Callable[[], Database], sync_s: float = 0.25, prune_every_s: int = 60
    ) -> None:
        self._database = database  # a callable: the runtime makes its database when it starts
        self._sync_s = sync_s
        self._prune_every_s = prune_every_s
        self._next_prune = 0.0
        self._known: dict[tuple[str, int], int] = {}  # every replica's hits at the last sync
        self._pending: dict[tuple[str, int], int] = {}  # this process's hits since
        self._ends: dict[tuple[str, int], int] = {}

    async def hit(self, bucket: str, start: int, window_s: int, amount: int = 1) -> int:
        key = (bucket, start)
        if key not in self._ends:  # the first hit here in this window: what the others counted
            self._ends[key] = start + window_s
            self._known[key] = await self._read(key)
        self._pending[key] = self._pending.get(key, 0) + amount
        return self._known.get(key, 0) + self._pending[key]

    async def _read(self, key: tuple[str, int]) -> int:
        hits = await self._database().read(
            lambda c: c.execute(
                select(RateLimitWindow.hits).where(
                    RateLimitWindow.bucket == key[0], RateLimitWindow.window_start == key[1]
                )
            ).scalar()
        )
        return int(hits or 0)

    async def count(self, bucket: str, start: int) -> int:
        key = (bucket, start)
        return self._known.get(key, 0) + self._pending.get(key, 0)

    async def clear(self, bucket: str, start: int) -> None:
        key = (bucket, start)
        self._known.pop(key, None)
        self._pending.pop(key, None)
        await self._database().write(
            lambda c: c.execute(
                delete(RateLimitWindow).where(
                    RateLimitWindow.bucket == bucket, RateLimitWindow.window_start == start
                )
            )
        )

    async def sync(self) -> None:
        """Add this process's hits to the shared rows and learn every replica's totals."""
        pending, self._pending = self._pending, {}
        now = time.time()
        live = {key: end for key, end in self._ends.items() if end > now}
        self._ends = live
        self._known = {key: n for key, n in self._known.items() if key in live}
        idle = sorted(key for key in live if key not in pending)
        if idle:  # buckets this replica has no news for: learn the others' hits
            totals = await self._database().read(lambda c: _hits(c, idle))
            for key in idle:
                self._known[key] = totals.get(key, 0)
        if not pending:
            return
        ends = dict(live)
        prune = now >= self._next_prune
        if prune:
            self._next_prune = now + self._prune_every_s

        def write(connection: Any) -> dict[tuple[str, int], int]:
            dialect = connection.dialect.name
            totals = {}
            for (bucket, start), amount in sorted(pending.items()):
                end = ends.get((bucket, start), start)
                statement, params = increment_statement(dialect, bucket, start, end, amount)
                totals[(bucket, start)] = int(connection.execute(statement, params).scalar_one())
            if prune:  # now and then, the rows of windows that have ended
                connection.execute(
                    delete(RateLimitWindow).where(RateLimitWindow.expires_at <= int(now))
                )
            return totals

        try:
            totals = await self._database().write(write)
        except Exception:
            for key, amount in pending.items():  # counted again at the next sync
                self._pending[key] = self._pending.get(key, 0) + amount
            raise
        for key, total in totals.items():
            self._known[key] = total

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._sync_s)
            try:
                await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("rate-limit counters not synced; next round", exc_info=True)
