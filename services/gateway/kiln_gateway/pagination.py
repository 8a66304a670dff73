"""The one pagination of every list route: `page` (1-based) and `per_page` (at most 100,
default 25) in the query; `{"data": [...], "pagination": {"page", "per_page", "total_pages",
"total_results"}}` in the answer (docs/architecture.md, "Envelopes and error codes")."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Query
from pydantic import BaseModel
from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

MAX_PAGE = 100_000
MAX_PER_PAGE = 100
DEFAULT_PER_PAGE = 25


@dataclass(frozen=True)
class PageRequest:
    page: int
    per_page: int

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.per_page


async def page_request(
    page: int = Query(default=1, ge=1, le=MAX_PAGE),
    per_page: int = Query(default=DEFAULT_PER_PAGE, ge=1, le=MAX_PER_PAGE),
) -> PageRequest:
    return PageRequest(page, per_page)


PageDep = Annotated[PageRequest, Depends(page_request)]


class Pagination(BaseModel):
    page: int
    per_page: int
    total_pages: int
    total_results: int


def pagination(page: PageRequest, total: int) -> dict[str, int]:
    return {
        "page": page.page,
        "per_page": page.per_page,
        "total_pages": (total + page.per_page - 1) // page.per_page,
        "total_results": total,
    }


def paged(items: list[Any], page: PageRequest, total: int) -> dict[str, Any]:
    """The list envelope: one page of `items` out of `total`."""
    return {"data": items, "pagination": pagination(page, total)}


async def count_rows(session: AsyncSession, query: Select[Any]) -> int:
    """How many rows `query` selects, whatever its ordering and paging."""
    counted = select(func.count()).select_from(query.order_by(None).subquery())
    return int(await session.scalar(counted) or 0)


async def fetch_page(
    session: AsyncSession, query: Select[Any], page: PageRequest
) -> tuple[Sequence[Any], int]:
    """One page of an ordered ORM `query` and the number of rows in all pages."""
    total = await count_rows(session, query)
    rows = (await session.scalars(query.offset(page.offset).limit(page.per_page))).all()
    return rows, total
