"""Where rate-limit counters live: hits per (bucket, fixed window), counted atomically.

- `DatabaseCounterStore` (the default): one row per (bucket, window) in the gateway's database,
  incremented by a single `INSERT … ON CONFLICT DO UPDATE … RETURNING` statement, so that any
  number of gateway replicas sharing the database count exactly (SQLite and PostgreSQL);
- `MemoryCounterStore`: a dict in this process; exact for one process, per replica otherwise.
"""

from collections.abc import Callable
from typing import Any, Protocol

from sqlalchemy import delete, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from kiln_gateway.tables import RateLimitWindow


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


def increment_statement(
    dialect: str, bucket: str, start: int, expires_at: int, amount: int = 1
) -> Any:
    """`INSERT … ON CONFLICT (bucket, window_start) DO UPDATE SET hits = hits + amount
    RETURNING hits`: one atomic statement on SQLite (3.35+) and PostgreSQL alike."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return (
        insert(RateLimitWindow)
        .values(bucket=bucket, window_start=start, hits=amount, expires_at=expires_at)
        .on_conflict_do_update(
            index_elements=[RateLimitWindow.bucket, RateLimitWindow.window_start],
            set_={"hits": RateLimitWindow.hits + amount},
        )
        .returning(RateLimitWindow.hits)
    )


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
            statement = increment_statement(dialect, bucket, start, start + window_s, amount)
            count = int((await conn.execute(statement)).scalar_one())
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
