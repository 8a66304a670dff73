"""Who is calling, without a database write per request (docs/architecture.md, "Hot paths").

`CallerCache` keeps each API key (with its account) for `ttl_s` after reading it, so a key
revoked or an account suspended on any replica stops working within `ttl_s` everywhere (at once
on the replica that did it). `LastUsed` notes when each key was last used and writes those
times every `flush_s`, in one statement, instead of a write per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, or_, select, update

from kiln_gateway.tables import Account, ApiKey
from kiln_runtime.service import ServiceRuntime
from kiln_runtime.unit import Unit

log = logging.getLogger(__name__)

keys_table = cast(Table, ApiKey.__table__)
accounts_table = cast(Table, Account.__table__)

_KEY_WITH_ACCOUNT = (
    select(keys_table, accounts_table.c.suspended.label("account_suspended"))
    .join(accounts_table, accounts_table.c.id == keys_table.c.account_id)
    .where(keys_table.c.secret_sha256 == bindparam("hash"))
)
_TOUCH = (
    update(keys_table)
    .where(
        keys_table.c.id == bindparam("key_id"),
        or_(keys_table.c.last_used_at.is_(None), keys_table.c.last_used_at < bindparam("at")),
    )
    .values(last_used_at=bindparam("at"))
)


def _aware(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class KnownKey:
    """An API key as the cache holds it: the key, and whether its account is suspended."""

    key: ApiKey
    account_id: str
    suspended: bool


def _load(connection: Connection, secret_hash: str) -> KnownKey | None:
    row = connection.execute(_KEY_WITH_ACCOUNT, {"hash": secret_hash}).first()
    if row is None:
        return None
    values: dict[str, Any] = {c.name: row._mapping[c.name] for c in keys_table.columns}
    for name in ("created_at", "last_used_at", "revoked_at"):
        values[name] = _aware(values[name])
    return KnownKey(ApiKey(**values), row.account_id, bool(row.account_suspended))


class CallerCache:
    def __init__(self, runtime: ServiceRuntime, ttl_s: float) -> None:
        self._runtime = runtime
        self._ttl_s = ttl_s
        self._entries: dict[str, tuple[float, KnownKey | None]] = {}
        self._loading: dict[str, asyncio.Future[KnownKey | None]] = {}

    async def key(self, secret_hash: str) -> KnownKey | None:
        """The key whose secret hashes to `secret_hash` (None: no such key), at most `ttl_s`
        old. Concurrent misses for one key share one read."""
        now = time.monotonic()
        hit = self._entries.get(secret_hash)
        if hit is not None and hit[0] > now:
            return hit[1]
        loading = self._loading.get(secret_hash)
        if loading is not None:
            return await asyncio.shield(loading)
        future: asyncio.Future[KnownKey | None] = asyncio.get_running_loop().create_future()
        self._loading[secret_hash] = future
        try:
            found = await self._runtime.read(lambda c: _load(c, secret_hash))
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: a later waiter re-raises it, nobody else must
            raise
        finally:
            self._loading.pop(secret_hash, None)
        if len(self._entries) > 100_000:
            self._entries.clear()
        self._entries[secret_hash] = (now + self._ttl_s, found)
        future.set_result(found)
        return found

    def forget_key(self, key_id: str) -> None:
        """A key of this replica's changed (revoked, rotated): read it afresh next time."""
        for secret_hash, (_, known) in list(self._entries.items()):
            if known is not None and known.key.id == key_id:
                del self._entries[secret_hash]

    def forget_account(self, account_id: str) -> None:
        """An account changed (suspended, resumed): read its keys afresh next time."""
        for secret_hash, (_, known) in list(self._entries.items()):
            if known is not None and known.account_id == account_id:
                del self._entries[secret_hash]


class LastUsed:
    """`api_keys.last_used_at`, written every `flush_s` for the keys used meanwhile."""

    def __init__(self, runtime: ServiceRuntime, flush_s: float) -> None:
        self._runtime = runtime
        self._flush_s = flush_s
        self._pending: dict[str, datetime] = {}

    def note(self, key_id: str, at: datetime) -> None:
        self._pending[key_id] = at

    async def flush(self) -> None:
        pending, self._pending = self._pending, {}
        if not pending:
            return

        def touch(unit: Unit) -> None:
            unit.connection.execute(
                _TOUCH, [{"key_id": key, "at": at} for key, at in pending.items()]
            )

        try:
            await self._runtime.write(touch)
        except Exception:
            for key, at in pending.items():  # next round
                self._pending.setdefault(key, at)
            raise

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._flush_s)
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("last-used times not written; next round", exc_info=True)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.flush()
