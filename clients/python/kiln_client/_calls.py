"""Every API request the SDK makes, described once for both clients (docs/api.md)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from typing import Any
from urllib.parse import quote

from kiln_client._http import Call


def _id(value: str) -> str:
    return quote(value, safe="")


def _when(value: datetime | date | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return value.isoformat()


# ------------------------------------------------------------------------------ jobs


def job_body(
    model: str,
    input: Mapping[str, Any],
    *,
    webhook_url: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    sandbox: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "input": dict(input)}
    if webhook_url is not None:
        body["webhook_url"] = webhook_url
    if metadata is not None:
        body["metadata"] = dict(metadata)
    if sandbox is not None:
        body["sandbox"] = dict(sandbox)
    return body


def create_job(body: dict[str, Any], *, idempotency_key: str | None, respond_async: bool) -> Call:
    headers = {"Prefer": "respond-async"} if respond_async else {}
    # The server records the key with the job it made: a replay is harmless.
    return Call(
        "POST",
        "jobs",
        json=body,
        replay_safe=True,
        idempotency_key=idempotency_key,
        headers=headers,
    )


def quote_job(body: dict[str, Any]) -> Call:
    return Call("POST", "jobs/quote", json=body, replay_safe=True)


def get_job(job_id: str) -> Call:
    return Call("GET", f"jobs/{_id(job_id)}")


def job_filters(
    status: str | list[str] | None,
    model: str | None,
    created_after: datetime | str | None,
    created_before: datetime | str | None,
) -> dict[str, Any]:
    return {
        "status": status,
        "model": model,
        "created_after": _when(created_after),
        "created_before": _when(created_before),
    }


def list_jobs(page: int, per_page: int, filters: dict[str, Any], sort: str | None) -> Call:
    return Call("GET", "jobs", params={"page": page, "per_page": per_page, "sort": sort, **filters})


def count_jobs(filters: dict[str, Any]) -> Call:
    return Call("GET", "jobs/count", params=filters)


def cancel_job(job_id: str) -> Call:
    return Call("POST", f"jobs/{_id(job_id)}/cancel", replay_safe=True)


def job_events(job_id: str) -> Call:
    return Call(
        "GET",
        f"jobs/{_id(job_id)}/events",
        headers={"Accept": "text/event-stream", "Cache-Control": "no-store"},
    )


# ------------------------------------------------------------------------------ catalog, usage


def list_models() -> Call:
    return Call("GET", "models")


def get_model(model_id: str) -> Call:
    return Call("GET", f"models/{quote(model_id, safe='/')}")


def get_usage() -> Call:
    return Call("GET", "usage")


def usage_stats(group_by: str, start: date | str | None, end: date | str | None) -> Call:
    return Call(
        "GET",
        "usage/stats",
        params={"group_by": group_by, "start": _when(start), "end": _when(end)},
    )


def list_events(after: str | None, limit: int) -> Call:
    return Call("GET", "events", params={"after": after, "limit": limit})


# ------------------------------------------------------------------------------ webhooks


def create_endpoint(url: str, event_types: list[str] | None, description: str | None) -> Call:
    body: dict[str, Any] = {"url": url}
    if event_types is not None:
        body["event_types"] = list(event_types)
    if description is not None:
        body["description"] = description
    return Call("POST", "webhooks", json=body)


def list_endpoints(page: int, per_page: int) -> Call:
    return Call("GET", "webhooks", params={"page": page, "per_page": per_page})


def get_endpoint(endpoint_id: str) -> Call:
    return Call("GET", f"webhooks/{_id(endpoint_id)}")


def update_endpoint(
    endpoint_id: str, url: str | None, event_types: list[str] | None, description: str | None
) -> Call:
    body = {
        key: value
        for key, value in (("url", url), ("event_types", event_types), ("description", description))
        if value is not None
    }
    return Call("PATCH", f"webhooks/{_id(endpoint_id)}", json=body, replay_safe=True)


def delete_endpoint(endpoint_id: str) -> Call:
    return Call("DELETE", f"webhooks/{_id(endpoint_id)}", replay_safe=True)


def test_endpoint(endpoint_id: str) -> Call:
    return Call("POST", f"webhooks/{_id(endpoint_id)}/test")


def default_secret() -> Call:
    return Call("GET", "webhooks/default-secret")


def public_key() -> Call:
    return Call("GET", "webhooks/public-key")


def list_deliveries(
    page: int, per_page: int, job_id: str | None, endpoint_id: str | None, status: str | None
) -> Call:
    return Call(
        "GET",
        "webhooks/deliveries",
        params={
            "page": page,
            "per_page": per_page,
            "job_id": job_id,
            "endpoint_id": endpoint_id,
            "status": status,
        },
    )


def get_delivery(delivery_id: str) -> Call:
    return Call("GET", f"webhooks/deliveries/{_id(delivery_id)}")


def redeliver(delivery_id: str) -> Call:
    return Call("POST", f"webhooks/deliveries/{_id(delivery_id)}/redeliver")


# ------------------------------------------------------------------------------ sessions, keys


def login(email: str, password: str) -> Call:
    return Call(
        "POST",
        "auth/token",
        json={"email": email, "password": password},
        auth="none",
        replay_safe=True,
    )


def create_key(name: str, sandbox: bool) -> Call:
    return Call("POST", "keys", json={"name": name, "sandbox": sandbox}, auth="session")


def list_keys(page: int, per_page: int, include_revoked: bool) -> Call:
    return Call(
        "GET",
        "keys",
        auth="session",
        params={"page": page, "per_page": per_page, "include_revoked": include_revoked},
    )


def rotate_key(key_id: str) -> Call:
    # Not replayed: a second rotation would revoke the new key's predecessor again (409) and
    # the new secret, shown once, would be lost with the first answer.
    return Call("POST", f"keys/{_id(key_id)}/rotate", auth="session")


def revoke_key(key_id: str) -> Call:
    return Call("DELETE", f"keys/{_id(key_id)}", auth="session", replay_safe=True)
