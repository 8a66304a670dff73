"""Client-side batching: requests for one Triton model that wait at the same time go as one
request of several rows (docs/architecture.md, "Inference").

Triton spends most of a small model's time per request, not per row (gRPC, scheduling, the
Python backend's hand-off): one request of 8 rows costs about as much as two of one. Triton's
dynamic batcher groups requests too, but only after each has paid its way in. So the worker
keeps at most ``calls`` requests in flight per model and sends whatever waits when one returns,
up to ``rows`` rows at a time. It never waits to fill a batch: a request that finds a free call
goes at once (with any others made in the same turn of the event loop), so a quiet model sees
the latency it always had, and a busy one sees fewer, fuller requests.

Rows of one request end together, so only requests that take about as long share one: the
caller passes a ``batch_class`` (the sandbox's delay) and only requests of one class are sent
together. Each caller keeps its own deadline; a caller that gives up (timeout, cancel) leaves
its row's answer unread, and the other rows are not affected.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from kiln_inference.triton_client import (
    GUARD_GRACE_S,
    TRITON_TIMEOUT,
    TritonInferenceError,
    infer_rows,
)

Answer = tuple[bytes, str] | TritonInferenceError
SendRows = Callable[[str, str, Sequence[bytes], float], Awaitable[list[Answer]]]


@dataclass
class _Row:
    payload: bytes
    timeout_s: float
    answer: asyncio.Future[tuple[bytes, str]]


@dataclass
class RowBatcher:
    """Rows of one (server, model, batch class), sent as requests of up to ``rows`` rows with at
    most ``calls`` requests in flight."""

    url: str
    triton_model: str
    rows: int
    calls: int
    send_rows: SendRows = infer_rows
    _waiting: deque[_Row] = field(default_factory=deque)
    _in_flight: int = 0
    _flush_scheduled: bool = False
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    sizes: list[int] = field(default_factory=list)  # rows per request sent, newest last (tests)

    async def infer(self, payload: bytes, timeout_s: float) -> tuple[bytes, str]:
        """This row's (file, content type); raises TritonInferenceError."""
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        loop = asyncio.get_running_loop()
        row = _Row(payload, timeout_s, loop.create_future())
        self._waiting.append(row)
        if not self._flush_scheduled:
            # after this turn of the loop, so that rows made together leave together
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        try:
            async with asyncio.timeout(timeout_s + GUARD_GRACE_S):
                return await row.answer
        except TimeoutError:
            raise TritonInferenceError(TRITON_TIMEOUT, "Triton did not answer in time") from None

    def _flush(self) -> None:
        self._flush_scheduled = False
        while self._waiting and self._in_flight < self.calls:
            batch: list[_Row] = []
            while self._waiting and len(batch) < self.rows:
                row = self._waiting.popleft()
                if not row.answer.done():  # its caller gave up while it waited
                    batch.append(row)
            if not batch:
                return
            self._in_flight += 1
            self.sizes.append(len(batch))
            del self.sizes[:-1000]
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[_Row]) -> None:
        try:
            answers = await self.send_rows(
                self.url,
                self.triton_model,
                [row.payload for row in batch],
                max(row.timeout_s for row in batch),
            )
        except TritonInferenceError as exc:
            answers = [_copy(exc) for _ in batch]
        except asyncio.CancelledError:
            for row in batch:
                row.answer.cancel()
            raise
        except Exception as exc:  # a bug must reach each caller, not vanish with this task
            for row in batch:
                if not row.answer.done():
                    row.answer.set_exception(exc)
            answers = []
        finally:
            self._in_flight -= 1
            if self._waiting and not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)
        for row, answer in zip(batch, answers, strict=False):
            if row.answer.done():
                continue
            if isinstance(answer, TritonInferenceError):
                row.answer.set_exception(answer)
            else:
                row.answer.set_result(answer)
        for row in batch[len(answers) :]:
            if not row.answer.done():
                row.answer.set_exception(
                    TritonInferenceError("MODEL_ERROR", "Triton answered fewer rows than sent")
                )


def _copy(exc: TritonInferenceError) -> TritonInferenceError:
    return TritonInferenceError(exc.code, exc.message, retryable=exc.retryable)


# One batcher per (event loop, server, model, batch class): a gRPC channel belongs to its loop.
_batchers: dict[tuple[str, str, str, int, int], tuple[asyncio.AbstractEventLoop, RowBatcher]] = {}


def batcher(url: str, triton_model: str, batch_class: str, rows: int, calls: int) -> RowBatcher:
    loop = asyncio.get_running_loop()
    key = (url, triton_model, batch_class, rows, calls)
    cached = _batchers.get(key)
    if cached is not None and cached[0] is loop:
        return cached[1]
    made = RowBatcher(url=url, triton_model=triton_model, rows=rows, calls=calls)
    _batchers[key] = (loop, made)
    return made
