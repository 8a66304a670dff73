"""/healthz (the process runs), /readyz (its dependencies answer) and /metrics, served by every
service's HTTP server (http.py)."""

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiokafka import AIOKafkaProducer
from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

ReadinessCheck = Callable[[], Awaitable[bool]]


class Readiness:
    def __init__(self, checks: Mapping[str, ReadinessCheck], timeout_s: float = 2.0) -> None:
        self._checks = dict(checks)
        self._timeout_s = timeout_s

    async def report(self) -> tuple[bool, dict[str, bool]]:
        async def run(check: ReadinessCheck) -> bool:
            try:
                async with asyncio.timeout(self._timeout_s):
                    return await check()
            except Exception:
                return False

        names = list(self._checks)
        results = await asyncio.gather(*(run(self._checks[n]) for n in names))
        report = dict(zip(names, results, strict=True))
        return all(results), report


def kafka_check(producer: AIOKafkaProducer) -> ReadinessCheck:
    async def check() -> bool:
        metadata = await producer.client.fetch_all_metadata()
        return bool(metadata.brokers())

    return check


def readiness_body(ready: bool, checks: dict[str, bool]) -> dict[str, Any]:
    return {"status": "ready" if ready else "unavailable", "checks": checks}


def health_router(readiness: Callable[[], Readiness | None]) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz(response: Response) -> dict[str, Any]:
        current = readiness()
        if current is None:
            response.status_code = 503
            return readiness_body(False, {"started": False})
        ready, checks = await current.report()
        response.status_code = 200 if ready else 503
        return readiness_body(ready, checks)

    @router.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router
