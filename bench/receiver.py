"""A webhook receiver for benchmarks: an aiohttp server on its own thread and event loop that
notes when each job's terminal webhook first arrived (time.monotonic, the clock the load
generators use). It does not verify signatures: that costs the receiver, not the pipeline, and
the e2e tests verify them."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType

from aiohttp import web

TERMINAL_TYPES = frozenset({"job.completed", "job.failed", "job.canceled"})


@dataclass(frozen=True)
class Arrival:
    job_id: str
    type: str
    at: float  # time.monotonic()


def _resolve(future: asyncio.Future[Arrival], arrival: Arrival) -> None:
    if not future.done():
        future.set_result(arrival)


class WebhookReceiver:
    """`with WebhookReceiver() as hooks: ... hooks.url ... hooks.wait_for(ids, timeout_s)`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port
        self._arrivals: dict[str, Arrival] = {}
        self._deliveries = 0
        self._changed = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        # Async waiters (job id → futures on their own loops), woken from the server thread.
        self._waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Future[Arrival]]]]
        self._waiters = {}

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._port}/hooks"

    @property
    def deliveries(self) -> int:
        """Every POST received, terminal or not, repeated or not."""
        return self._deliveries

    def arrivals(self) -> dict[str, Arrival]:
        with self._changed:
            return dict(self._arrivals)

    def reset(self) -> None:
        with self._changed:
            self._arrivals.clear()
            self._deliveries = 0

    def wait_for(self, job_ids: Iterable[str], timeout_s: float) -> dict[str, Arrival]:
        """Wait until every one of `job_ids` has its terminal webhook (or the timeout); returns
        the arrivals of those that came."""
        wanted = set(job_ids)
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not wanted <= self._arrivals.keys():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(min(remaining, 0.5))
            return {job: self._arrivals[job] for job in wanted if job in self._arrivals}

    async def arrival(self, job_id: str, timeout_s: float) -> Arrival | None:
        """Wait (in the caller's event loop) for one job's terminal webhook; None on timeout."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Arrival] = loop.create_future()
        with self._changed:
            found = self._arrivals.get(job_id)
            if found is not None:
                return found
            self._waiters.setdefault(job_id, []).append((loop, future))
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            with self._changed:
                waiting = self._waiters.get(job_id, [])
                if (loop, future) in waiting:
                    waiting.remove((loop, future))
            return None

    async def _hook(self, request: web.Request) -> web.Response:
        at = time.monotonic()
        try:
            event = json.loads(await request.read())
            kind = str(event.get("type", ""))
            job_id = str(event.get("data", {}).get("id", ""))
        except (ValueError, AttributeError):
            return web.Response(status=400)
        with self._changed:
            self._deliveries += 1
            if kind in TERMINAL_TYPES and job_id and job_id not in self._arrivals:
                arrival = Arrival(job_id, kind, at)
                self._arrivals[job_id] = arrival
                self._changed.notify_all()
                for loop, future in self._waiters.pop(job_id, []):
                    loop.call_soon_threadsafe(_resolve, future, arrival)
        return web.Response(status=204)

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        app = web.Application()
        app.router.add_post("/hooks", self._hook)
        runner = web.AppRunner(app, access_log=None)
        try:
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, self._host, self._port)
            loop.run_until_complete(site.start())
            server = getattr(site, "_server", None)
            if self._port == 0 and server is not None and server.sockets:
                self._port = int(server.sockets[0].getsockname()[1])
            self._runner = runner
        except BaseException as exc:
            self._error = exc
            self._started.set()
            return
        self._started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    def start(self) -> WebhookReceiver:
        self._thread = threading.Thread(target=self._serve, name="webhook-receiver", daemon=True)
        self._thread.start()
        self._started.wait(10)
        if self._error is not None:
            raise RuntimeError(f"webhook receiver did not start: {self._error}")
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
