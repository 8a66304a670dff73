"""A Kiln client against a mocked transport (respx): no network, no sleeping."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import respx

from kiln_client import AsyncKiln, Kiln

BASE = "https://kiln.test/api/v1"
KEY = "sk_test_unit"


def job_json(status: str = "queued", **changes: Any) -> dict[str, Any]:
    job = {
        "id": "job_" + "1" * 32,
        "model": "kiln/prompt-to-image",
        "status": status,
        "input": {"prompt": "a lighthouse"},
        "metadata": None,
        "sandbox": True,
        "created_at": "2026-11-21T09:14:00Z",
        "started_at": None,
        "completed_at": None,
        "queue_position": 3 if status == "queued" else None,
        "queue_reason": "capacity" if status == "queued" else None,
        "estimated_start_at": "2026-11-21T09:15:00Z" if status == "queued" else None,
        "progress": 1.0 if status == "completed" else 0.0,
        "cost": "0",
        "result": None,
        "error": None,
        "webhook_url": None,
    }
    job.update(changes)
    return job


class Sleeps(list[float]):
    """Every wait the client asked for, instead of waiting."""


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> Sleeps:
    recorded = Sleeps()

    def fake_sleep(seconds: float) -> None:
        recorded.append(seconds)

    async def fake_async_sleep(seconds: float) -> None:
        recorded.append(seconds)

    monkeypatch.setattr("kiln_client._http.time.sleep", fake_sleep)
    monkeypatch.setattr("kiln_client.client.time.sleep", fake_sleep)
    monkeypatch.setattr("kiln_client._http.anyio.sleep", fake_async_sleep)
    monkeypatch.setattr("kiln_client.async_client.anyio.sleep", fake_async_sleep)
    return recorded


@pytest.fixture
def api() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router


@pytest.fixture
def kiln(sleeps: Sleeps) -> Iterator[Kiln]:
    client = Kiln(KEY, base_url=BASE, max_retries=3)
    yield client
    client.close()


@pytest.fixture
async def akiln(sleeps: Sleeps) -> AsyncKiln:
    return AsyncKiln(KEY, base_url=BASE, max_retries=3)


def fast(client: Kiln, **retry: Any) -> Kiln:
    client._http.options = replace(
        client._http.options, retry=replace(client._http.options.retry, **retry)
    )
    return client
