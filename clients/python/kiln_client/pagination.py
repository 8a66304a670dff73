"""Auto-paging lists: iterate a pager and it fetches page after page as you go.

Lists are sorted newest first, so a job created while you iterate shifts the later pages by
one; the pager drops an item it already yielded instead of yielding it twice.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Generic, TypeVar

from kiln_client.models import Page

T = TypeVar("T")

DEFAULT_PER_PAGE = 100


def parse_page(body: Any, parse: Callable[[Any], T]) -> Page[T]:
    pagination = body.get("pagination") or {} if isinstance(body, dict) else {}
    items = body.get("data") if isinstance(body, dict) else None
    return Page(
        items=[parse(item) for item in items or []],
        page=int(pagination.get("page", 1)),
        per_page=int(pagination.get("per_page", len(items or []))),
        total_pages=int(pagination.get("total_pages", 1)),
        total_results=int(pagination.get("total_results", len(items or []))),
    )


def _identity(item: Any) -> Any:
    return getattr(item, "id", None) or id(item)


class SyncPager(Generic[T]):
    def __init__(
        self,
        fetch: Callable[[int], Page[T]],
        *,
        first_page: int = 1,
        limit: int | None = None,
    ) -> None:
        self._fetch = fetch
        self._first_page = first_page
        self._limit = limit

    def first(self) -> Page[T]:
        """Only the first page (with its totals)."""
        return self._fetch(self._first_page)

    def pages(self) -> Iterator[Page[T]]:
        number = self._first_page
        while True:
            page = self._fetch(number)
            yield page
            if not page.items or number >= page.total_pages:
                return
            number += 1

    def __iter__(self) -> Iterator[T]:
        seen: set[Any] = set()
        count = 0
        for page in self.pages():
            for item in page.items:
                key = _identity(item)
                if key in seen:
                    continue
                seen.add(key)
                yield item
                count += 1
                if self._limit is not None and count >= self._limit:
                    return

    def to_list(self) -> list[T]:
        return list(self)


class AsyncPager(Generic[T]):
    def __init__(
        self,
        fetch: Callable[[int], Awaitable[Page[T]]],
        *,
        first_page: int = 1,
        limit: int | None = None,
    ) -> None:
        self._fetch = fetch
        self._first_page = first_page
        self._limit = limit

    async def first(self) -> Page[T]:
        return await self._fetch(self._first_page)

    async def pages(self) -> AsyncIterator[Page[T]]:
        number = self._first_page
        while True:
            page = await self._fetch(number)
            yield page
            if not page.items or number >= page.total_pages:
                return
            number += 1

    async def __aiter__(self) -> AsyncIterator[T]:
        seen: set[Any] = set()
        count = 0
        async for page in self.pages():
            for item in page.items:
                key = _identity(item)
                if key in seen:
                    continue
                seen.add(key)
                yield item
                count += 1
                if self._limit is not None and count >= self._limit:
                    return

    async def to_list(self) -> list[T]:
        return [item async for item in self]
