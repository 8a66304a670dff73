"""Query-string reading shared by the console's list pages: a page number and size that never
fail (a bad value is the default, as a person would expect from a link), and id checks."""

import re

from starlette.requests import Request

from kiln_gateway.console.errors import ConsoleError
from kiln_gateway.pagination import MAX_PAGE, MAX_PER_PAGE, PageRequest

NOT_FOUND = "There is no such page."


def page_of(request: Request, per_page_default: int = 25) -> PageRequest:
    def number(name: str, default: int, top: int) -> int:
        text = request.query_params.get(name, "")
        if text.isascii() and text.isdigit() and len(text) <= 7:
            return min(max(int(text), 1), top)
        return default

    return PageRequest(
        number("page", 1, MAX_PAGE), number("per_page", per_page_default, MAX_PER_PAGE)
    )


def checked_id(value: str, prefix: str) -> str:
    """An id of the form `<prefix>_<32 hex>`, else this page does not exist (404)."""
    if not re.fullmatch(rf"{re.escape(prefix)}_[0-9a-f]{{32}}", value):
        raise ConsoleError(404, NOT_FOUND)
    return value


NOTICES = {
    "key-revoked": "The key is revoked: its next request gets 401.",
    "endpoint-deleted": "The endpoint is deleted: nothing more is sent to it.",
    "endpoint-disabled": "The endpoint is disabled: nothing is sent to it until you enable it.",
    "endpoint-enabled": "The endpoint is enabled again.",
    "test-sent": "A test event is on its way: its delivery shows up in the log below.",
    "redelivery": "The delivery is sent again: its attempts show up in the log.",
    "job-canceled": "Cancel requested: the job stops and is refunded in full.",
    "account-created": "The account is made.",
    "account-suspended": "The account is suspended: its keys get 403 and its console sessions end.",
    "account-resumed": "The account is active again.",
}


def notice(request: Request) -> str:
    """A fixed sentence named in the query (never text from the query itself)."""
    return NOTICES.get(request.query_params.get("notice", ""), "")
