"""Client-side batching (kiln_inference.triton_batches) against a scripted sender: which rows
leave together, and that each answer, error, timeout and cancel stays with its own row. The
same rows on a real Triton: tests/integration/modelhost/test_triton_models.py."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import pytest

from kiln_inference.triton_batches import Answer, RowBatcher, batcher
from kiln_inference.triton_client import TritonInferenceError


class Sender:
    """Answers each row with its own payload reversed, after `release` is set."""

    def __init__(self) -> None:
        self.requests: list[list[bytes]] = []
        self.release = asyncio.Event()
        self.fail_with: TritonInferenceError | None = None

    async def __call__(
        self, url: str, model: str, payloads: Sequence[bytes], timeout_s: float
    ) -> list[Answer]:
        self.requests.append(list(payloads))
        await self.release.wait()
        if self.fail_with is not None:
            raise self.fail_with
        answers: list[Answer] = []
        for payload in payloads:
            if payload.startswith(b"bad"):
                answers.append(TritonInferenceError("INVALID_INPUT", f"row {payload!r}"))
            else:
                answers.append((payload[::-1], "text/plain"))
        return answers


def rows(sender: Sender, *, rows: int = 8, calls: int = 1) -> RowBatcher:
    return RowBatcher(url="u", triton_model="m", rows=rows, calls=calls, send_rows=sender)


async def test_a_lone_row_leaves_at_once() -> None:
    sender = Sender()
    sender.release.set()
    assert await rows(sender).infer(b"abc", 5) == (b"cba", "text/plain")
    assert sender.requests == [[b"abc"]]


async def test_rows_made_together_leave_together() -> None:
    sender = Sender()
    sender.release.set()
    batches = rows(sender, calls=4)
    answers = await asyncio.gather(*(batches.infer(bytes([65 + i]), 5) for i in range(3)))
    assert [a for a, _ in answers] == [b"A", b"B", b"C"]
    assert sender.requests == [[b"A", b"B", b"C"]]


async def test_rows_waiting_for_a_call_go_in_one_request_of_at_most_rows() -> None:
    sender = Sender()
    batches = rows(sender, rows=4, calls=1)
    first = asyncio.create_task(batches.infer(b"first", 5))
    await asyncio.sleep(0.01)
    later = [asyncio.create_task(batches.infer(bytes([97 + i]), 5)) for i in range(6)]
    await asyncio.sleep(0.01)
    assert sender.requests == [[b"first"]]  # one call in flight: the others wait
    sender.release.set()
    await asyncio.gather(first, *later)
    assert sender.requests == [[b"first"], [b"a", b"b", b"c", b"d"], [b"e", b"f"]]
    assert batches.sizes == [1, 4, 2]
    assert [t.result()[0] for t in later] == [b"a", b"b", b"c", b"d", b"e", b"f"]


async def test_a_row_error_stays_with_its_row() -> None:
    sender = Sender()
    sender.release.set()
    batches = rows(sender, calls=4)
    results = await asyncio.gather(
        batches.infer(b"ok1", 5),
        batches.infer(b"bad", 5),
        batches.infer(b"ok2", 5),
        return_exceptions=True,
    )
    assert results[0] == (b"1ko", "text/plain")
    assert isinstance(results[1], TritonInferenceError) and results[1].code == "INVALID_INPUT"
    assert results[2] == (b"2ko", "text/plain")
    assert len(sender.requests) == 1


async def test_a_failed_request_fails_each_of_its_rows_with_its_own_error() -> None:
    sender = Sender()
    sender.fail_with = TritonInferenceError("TRITON_UNAVAILABLE", "Triton is not reachable")
    sender.release.set()
    batches = rows(sender, calls=4)
    results = await asyncio.gather(
        batches.infer(b"a", 5), batches.infer(b"b", 5), return_exceptions=True
    )
    assert all(isinstance(r, TritonInferenceError) for r in results)
    assert all(r.code == "TRITON_UNAVAILABLE" and r.retryable for r in results)  # type: ignore[union-attr]
    assert results[0] is not results[1]


async def test_a_caller_that_gives_up_leaves_the_others_their_answers() -> None:
    sender = Sender()
    batches = rows(sender, calls=1)
    busy = asyncio.create_task(batches.infer(b"busy", 5))
    await asyncio.sleep(0.01)
    impatient = asyncio.create_task(batches.infer(b"gone", 0.01))
    canceled = asyncio.create_task(batches.infer(b"canceled", 5))
    patient = asyncio.create_task(batches.infer(b"stays", 5))
    await asyncio.sleep(0.01)
    canceled.cancel()
    with pytest.raises(TritonInferenceError) as caught:
        # its deadline (plus the guard's grace) passes while the only call is busy
        await asyncio.wait_for(impatient, 5)
    assert caught.value.code == "TRITON_TIMEOUT"
    sender.release.set()
    assert await patient == (b"syats", "text/plain")
    assert await busy == (b"ysub", "text/plain")
    with contextlib.suppress(asyncio.CancelledError):
        await canceled
    # rows whose callers had gone were not sent
    assert sender.requests == [[b"busy"], [b"stays"]]


async def test_batch_classes_never_share_a_request() -> None:
    slow = batcher("127.0.0.1:1", "sandbox", "delay_ms=1000", 8, 8)
    fast = batcher("127.0.0.1:1", "sandbox", "delay_ms=0", 8, 8)
    assert slow is not fast
    assert batcher("127.0.0.1:1", "sandbox", "delay_ms=0", 8, 8) is fast


async def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError):
        await rows(Sender()).infer(b"x", 0)
