"""The client's settings: arguments first, then the environment (`KILN_API_KEY`,
`KILN_API_URL`, `KILN_SESSION_TOKEN`), then defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from kiln_client._retries import RetryPolicy

DEFAULT_BASE_URL = "http://127.0.0.1:8000/api/v1"
DEFAULT_TIMEOUT = 60.0
API_PATH = "/api/v1"


def normalize_base_url(url: str) -> str:
    """The API's base URL; a bare host (`https://kiln.example.com`) gets `/api/v1`."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"base_url must be an http(s) URL, got {url!r}")
    path = parts.path.rstrip("/")
    if path in ("",):
        path = API_PATH
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


@dataclass(frozen=True)
class ClientOptions:
    api_key: str | None
    base_url: str
    session_token: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    """Seconds one HTTP attempt may take (connect, each read, each write)."""
    total_timeout: float | None = None
    """Seconds one call may take across all its retries; None: no bound beyond the retries."""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    respond_async: bool = False
    """Send `Prefer: respond-async` on job creation (answer `pending` at once)."""
    default_headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def resolve(
        cls,
        *,
        api_key: str | None,
        base_url: str | None,
        session_token: str | None,
        timeout: float | None,
        total_timeout: float | None,
        max_retries: int | None,
        respond_async: bool,
        default_headers: dict[str, str] | None,
    ) -> ClientOptions:
        retry = RetryPolicy() if max_retries is None else RetryPolicy(max_retries=max_retries)
        if retry.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        return cls(
            api_key=api_key or os.environ.get("KILN_API_KEY") or None,
            base_url=normalize_base_url(
                base_url or os.environ.get("KILN_API_URL") or DEFAULT_BASE_URL
            ),
            session_token=session_token or os.environ.get("KILN_SESSION_TOKEN") or None,
            timeout=DEFAULT_TIMEOUT if timeout is None else float(timeout),
            total_timeout=total_timeout,
            retry=retry,
            respond_async=respond_async,
            default_headers=tuple((default_headers or {}).items()),
        )

    def updated(self, **changes: Any) -> ClientOptions:
        max_retries = changes.pop("max_retries", None)
        if max_retries is not None:
            if max_retries < 0:
                raise ValueError("max_retries must be >= 0")
            changes["retry"] = replace(self.retry, max_retries=max_retries)
        return replace(self, **{k: v for k, v in changes.items() if v is not None})
