"""The console's errors, shown as pages (the API's stay JSON envelopes): a page error, a
sign-in needed, and the gateway's own errors when they happen under `/console/`."""

from urllib.parse import quote


class ConsoleError(Exception):
    """A page that cannot be shown: a status and a sentence for a person."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class SignInRequired(Exception):
    """No live session of the right kind: to the sign-in page, and back afterwards."""

    def __init__(self, next_path: str, *, operator: bool = False, reason: str = "") -> None:
        super().__init__(reason or "sign in")
        self.next_path = next_path
        self.operator = operator
        self.reason = reason

    @property
    def location(self) -> str:
        page = "/console/admin/login" if self.operator else "/console/login"
        query = f"?next={quote(self.next_path, safe='/')}"
        if self.reason:
            query += f"&reason={quote(self.reason)}"
        return page + query


def safe_next(path: str | None, default: str = "/console/") -> str:
    """A path to go back to after sign-in: only a console path of this site."""
    if not path or not path.startswith("/console/") or path.startswith("//") or "\\" in path:
        return default
    if any(ord(c) < 0x20 for c in path):
        return default
    return path
