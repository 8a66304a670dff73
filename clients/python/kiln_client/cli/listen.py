"""`kiln listen --forward-to URL`: follow the account's events feed and POST each job event to
a local handler, signed like a real delivery (Standard Webhooks `v1`) with a local secret, so
that webhooks can be developed without a public URL (as `stripe listen` does).

The body is what a real delivery carries: `{"type", "timestamp", "data"}`. For the events
Kiln also delivers as webhooks (`job.completed`, `job.failed`, `job.canceled`) `data` is the
full job object; for the others (`job.created`, `job.queued`, `job.started`, …, credits) it
is the feed's summary of the job, with `id` set to the job's id. `webhook-id` is derived from
the event's cursor, so a handler can deduplicate as it would with real deliveries.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from kiln_client import __version__
from kiln_client.client import Kiln
from kiln_client.errors import APIError
from kiln_client.models import AccountEvent
from kiln_client.signatures import sign_webhook

DELIVERED_TYPES = frozenset({"job.completed", "job.failed", "job.canceled"})


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode("ascii")


def matches(event_type: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(event_type, pattern) for pattern in patterns)


@dataclass(frozen=True)
class Forwarded:
    event_id: str
    type: str
    job_id: str | None
    status_code: int | None
    error: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "type": self.type,
            "job_id": self.job_id,
            "status_code": self.status_code,
            "error": self.error,
        }


class Forwarder:
    def __init__(
        self,
        kiln: Kiln,
        forward_to: str,
        *,
        secret: str,
        patterns: list[str],
        retries: int = 2,
        timeout: float = 10.0,
        http: httpx.Client | None = None,
    ) -> None:
        self.kiln = kiln
        self.forward_to = forward_to
        self.secret = secret
        self.patterns = patterns
        self.retries = retries
        self.http = http or httpx.Client(timeout=timeout)

    def payload(self, event: AccountEvent) -> dict[str, Any]:
        data: dict[str, Any] = {"id": event.job_id, **event.data}
        if event.type in DELIVERED_TYPES and event.job_id is not None:
            try:
                data = self.kiln.jobs.get(event.job_id).raw
            except APIError:
                pass  # keep the summary: the handler still learns what happened
        stamp = event.occurred_at or datetime.now(UTC)
        return {
            "type": event.type,
            "timestamp": stamp.isoformat().replace("+00:00", "Z"),
            "data": data,
        }

    def forward(self, event: AccountEvent) -> Forwarded:
        body = json.dumps(self.payload(event), separators=(",", ":")).encode()
        status: int | None = None
        error: str | None = None
        for attempt in range(self.retries + 1):
            headers = sign_webhook(body, msg_id=f"evt_{event.id}", secret=self.secret)
            headers["content-type"] = "application/json"
            headers["user-agent"] = f"kiln-listen/{__version__}"
            try:
                response = self.http.post(self.forward_to, content=body, headers=headers)
                status, error = response.status_code, None
                if response.is_success:
                    break
                error = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                status, error = None, f"{type(exc).__name__}: {exc}"
            if attempt < self.retries:
                time.sleep(min(2.0**attempt, 5.0))
        return Forwarded(event.id, event.type, event.job_id, status, error)

    def run(
        self,
        *,
        after: str | None,
        report: Callable[[Forwarded], None],
        poll_interval: float = 1.0,
        stop: Callable[[], bool] = lambda: False,
    ) -> None:
        cursor = after
        while not stop():
            events, cursor = self.kiln.events.list(after=cursor, limit=100)
            for event in events:
                if matches(event.type, self.patterns):
                    report(self.forward(event))
            if len(events) < 100:
                time.sleep(poll_interval)
