"""What the gateway's rate limiter costs per request, for each counter store.

    uv run python bench/gateway_ratelimit_cost.py [--requests 2000] [--concurrency 1,16]

Measures, in this process, on a SQLite file in a temporary folder (PostgreSQL: pass
--database-url postgresql+asyncpg://…):
1. one `RateLimiter.hit` alone, per store (memory, database);
2. `GET /api/v1/models` with an API key through the whole app (ASGI, no network), with the
   limiter's store replaced by a no-op, by the memory store, and by the database store, one
   request at a time and with concurrent requests. The difference is the limiter's cost.
Bounded: a fixed number of requests; nothing leaves the process.
"""

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from pydantic import SecretStr

from kiln_crypto import new_secrets_key
from kiln_gateway.app import create_app
from kiln_gateway.config import GatewaySettings
from kiln_gateway.ratelimit_stores import CounterStore, DatabaseCounterStore, MemoryCounterStore
from kiln_gateway.ratelimits import Quota, RateLimiter
from kiln_gateway.state import GatewayState

ADMIN = "bench-admin-token"


class NoStore:
    """No limiter at all (every hit is the first)."""

    async def hit(self, bucket: str, start: int, window_s: int, amount: int = 1) -> int:
        return 1

    async def count(self, bucket: str, start: int) -> int:
        return 0

    async def clear(self, bucket: str, start: int) -> None:
        return None


@contextlib.asynccontextmanager
async def running_gateway(database_url: str, folder: Path) -> AsyncIterator[GatewayState]:
    settings = GatewaySettings(
        database_url=database_url,
        data_dir=folder,
        blob_dir=folder / "blobs",
        admin_token=ADMIN,
        secrets_keys=SecretStr(new_secrets_key()),
        decision_wait_s=0,
        rate_limit_live_read=10**9,
    )
    app = create_app(settings)
    state: GatewayState = app.state.gateway
    # The runtime without Kafka (as tests/integration/gateway/conftest.py does).
    await state.runtime.start(connect_kafka=False)
    state.app = app  # type: ignore[attr-defined, unused-ignore]
    try:
        yield state
    finally:
        await state.runtime.stop()


async def per_request_ms(
    client: httpx.AsyncClient, key: str, requests: int, concurrency: int
) -> tuple[float, float]:
    """(median latency in ms, throughput in requests/s)."""
    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {key}"}

    async def worker(count: int) -> None:
        for _ in range(count):
            start = time.perf_counter()
            response = await client.get("/models", headers=headers)
            latencies.append(time.perf_counter() - start)
            assert response.status_code == 200, response.text

    began = time.perf_counter()
    await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    return statistics.median(latencies) * 1000, len(latencies) / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        url = args.database_url or f"sqlite+aiosqlite:///{folder}/gateway.db"
        async with running_gateway(url, folder) as state:
            app = state.app  # type: ignore[attr-defined, unused-ignore]
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://bench/api/v1"
            ) as client:
                admin = {"Authorization": f"Bearer {ADMIN}"}
                account = (
                    await client.post(
                        "/admin/accounts",
                        json={"email": "bench@example.com", "password": "a long passphrase"},
                        headers=admin,
                    )
                ).json()["data"]
                key = (
                    await client.post(
                        f"/admin/accounts/{account['id']}/keys",
                        json={"name": "bench"},
                        headers=admin,
                    )
                ).json()["data"]["secret"]

                stores: dict[str, CounterStore] = {
                    "none": NoStore(),
                    "memory": MemoryCounterStore(),
                    "database": DatabaseCounterStore(lambda: state.runtime.engine),
                }
                print(f"database: {url.split('://')[0]}; {args.requests} requests per row\n")
                print("one RateLimiter.hit alone:")
                quota = Quota(10**9, 60)
                for name in ("memory", "database"):
                    limiter = RateLimiter(stores[name])
                    start = time.perf_counter()
                    for _ in range(args.requests):
                        await limiter.hit("bench", quota)
                    per_hit = (time.perf_counter() - start) / args.requests * 1e6
                    print(f"  {name:8s} {per_hit:8.1f} µs per hit")

                print("\nGET /api/v1/models with an API key (whole app, in process):")
                print(f"  {'store':8s} {'conc.':>5s} {'median ms':>10s} {'req/s':>8s}")
                for concurrency in levels:
                    for name in ("none", "memory", "database"):
                        state.rate_limiter.store = stores[name]
                        await per_request_ms(client, key, 200, concurrency)  # warm up
                        median, rate = await per_request_ms(client, key, args.requests, concurrency)
                        print(f"  {name:8s} {concurrency:5d} {median:10.2f} {rate:8.0f}")


if __name__ == "__main__":
    asyncio.run(main())
