"""The worker's side of retries and cancel, on a SQLite file with a stand-in Triton."""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from PIL import Image
from sqlalchemy import update

from kiln_contracts.v1 import jobs_pb2
from kiln_crypto import decrypt_bytes
from kiln_inference import repository
from kiln_inference import worker as worker_module
from kiln_inference.repository import WorkItemRow
from kiln_inference.tables import StoredResult
from kiln_inference.triton_client import TritonInferenceError
from kiln_inference.worker import announce_attempts
from kiln_modelhost.reference_models.image import render_image
from kiln_runtime.unit import Unit
from tests.unit.inference.worker_support import (
    SECRET,
    cancel_requested,
    dispatched,
    encryption_of,
    running_worker,
)

PNG = render_image("a lighthouse", 0, 64, 64)


async def answer_png(url: str, model: str, request: dict[str, Any], timeout_s: float) -> Any:
    return PNG, "image/png"


async def hang(url: str, model: str, request: dict[str, Any], timeout_s: float) -> Any:
    await asyncio.sleep(3600)
    raise AssertionError("unreachable")


def failing(code: str) -> Any:
    async def infer(url: str, model: str, request: dict[str, Any], timeout_s: float) -> Any:
        raise TritonInferenceError(code, "stand-in failure")

    return infer


def failure(event: Any) -> jobs_pb2.JobAttemptFailed:
    message = event.message
    assert isinstance(message, jobs_pb2.JobAttemptFailed)
    return message


async def test_completed_job_stores_an_encrypted_result(tmp_path: Path, monkeypatch: Any) -> None:
    async with running_worker(tmp_path, answer_png, monkeypatch) as h:
        await h.deliver(dispatched("job_ok"))
        (done,) = await h.wait_for("job.completed")
        # The model answered before the announce delay: no job.started; the end says when.
        assert [e.type for e in await h.emitted()] == ["job.completed"]
        assert done.message.started_at.seconds > 0  # type: ignore[attr-defined]
        result = done.message.result  # type: ignore[attr-defined]
        blob = h.blobs.open(result.blob_key).read()
        plain = decrypt_bytes(
            blob, secret=SECRET, job_id="job_ok", encryption=encryption_of(result)
        )
        assert Image.open(io.BytesIO(plain)).size == (64, 64)
        assert (await h.emitted("job.failed")) == []  # only the scheduler emits job.failed
        stored = await h.db.read(lambda c: repository.expired_results(c, datetime.now(UTC), 10))
        assert stored == [result.blob_key]
        assert await h.db.read(lambda c: repository.items_of_job(c, "job_ok")) == []


def decrypted(h: Any, completed: Any) -> bytes:
    result = completed.message.result
    blob = h.blobs.open(result.blob_key).read()
    return decrypt_bytes(
        blob, secret=SECRET, job_id=completed.job_id, encryption=encryption_of(result)
    )


async def test_a_second_completed_attempt_leaves_the_first_result_decryptable(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """A job can complete twice (its worker declared lost by mistake, a dispatch run again).
    The gateway keeps the first completion's encryption; the second attempt's result, sealed
    under a new file key, must not replace the blob that encryption opens."""
    async with running_worker(tmp_path, answer_png, monkeypatch) as h:
        await h.deliver(dispatched("job_twice", attempt=1))
        (first,) = await h.wait_for("job.completed")
        await h.deliver(dispatched("job_twice", attempt=2))
        _, second = await h.wait_for("job.completed", count=2)
        assert decrypted(h, first) == PNG
        assert first.message.result.blob_key != second.message.result.blob_key  # type: ignore[attr-defined]
        assert decrypted(h, second) == PNG


async def test_an_attempt_still_running_at_the_deadline_ends_itself_with_timeout(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """The worker, not the scheduler, ends the attempt it holds at the job's deadline: the
    job's end then has one producer, whichever way the model's answer and the deadline race."""
    async with running_worker(tmp_path, hang, monkeypatch) as h:
        await h.deliver(dispatched("job_slow", deadline_s=0.5))
        (event,) = await h.wait_for("job.attempt_failed", timeout_s=5)
        got = failure(event)
        assert (got.error_code, got.retryable) == ("TIMEOUT", False)
        assert got.error_message == "The job did not finish before its deadline."
        assert await h.emitted("job.completed") == []
        assert await h.db.read(lambda c: repository.items_of_job(c, "job_slow")) == []


@pytest.mark.parametrize(
    ("code", "retryable"),
    [
        ("TRITON_UNAVAILABLE", True),
        ("TRITON_TIMEOUT", True),
        ("MODEL_UNAVAILABLE", True),
        ("INVALID_INPUT", False),
        ("SANDBOX_FAILED", False),
    ],
)
async def test_failures_become_attempt_failed(
    tmp_path: Path, monkeypatch: Any, code: str, retryable: bool
) -> None:
    async with running_worker(tmp_path, failing(code), monkeypatch) as h:
        await h.deliver(dispatched("job_bad", attempt=2))
        (event,) = await h.wait_for("job.attempt_failed")
        got = failure(event)
        assert (got.error_code, got.retryable, got.attempt) == (code, retryable, 2)
        assert got.worker_id == h.settings.worker_id
        assert "stand-in" not in got.error_message  # public text, no internals
        assert (await h.emitted("job.failed")) == []


async def test_cancel_of_a_pending_item_drops_it(tmp_path: Path, monkeypatch: Any) -> None:
    async with running_worker(tmp_path, answer_png, monkeypatch, start=False) as h:
        await h.deliver(dispatched("job_p"))
        await h.deliver(cancel_requested("job_p"))
        (event,) = await h.wait_for("job.attempt_failed")
        assert (failure(event).error_code, failure(event).retryable) == ("CANCELED", False)
        assert await h.db.read(lambda c: repository.items_of_job(c, "job_p")) == []
        # a dispatch that arrives after the cancel never runs
        await h.deliver(dispatched("job_p", attempt=2))
        events = await h.wait_for("job.attempt_failed", 2)
        assert failure(events[1]).attempt == 2
        assert h.calls == []


async def test_cancel_stops_a_running_triton_call(tmp_path: Path, monkeypatch: Any) -> None:
    async with running_worker(tmp_path, hang, monkeypatch) as h:
        await h.deliver(dispatched("job_r"))
        await h.wait_for("job.started")
        await h.wait_for("job.progress")  # the call runs and reports progress
        started = asyncio.get_running_loop().time()
        await h.deliver(cancel_requested("job_r"))
        (event,) = await h.wait_for("job.attempt_failed", timeout_s=5)
        # The call stopped at the cancel (it would hang for an hour).
        assert asyncio.get_running_loop().time() - started < 10.0
        assert (failure(event).error_code, failure(event).retryable) == ("CANCELED", False)
        assert await h.emitted("job.completed") == []
        progress = [e.message.progress for e in await h.emitted("job.progress")]  # type: ignore[attr-defined]
        assert progress == sorted(progress) and all(0 < p < 1 for p in progress)


async def test_a_cancel_while_the_worker_is_down_ends_the_attempt(
    tmp_path: Path, monkeypatch: Any
) -> None:
    async with running_worker(tmp_path, hang, monkeypatch, start=False) as h:
        await h.deliver(dispatched("job_k"))
        await h.deliver(cancel_requested("job_k"))  # the worker was killed before it ran it
        (event,) = await h.wait_for("job.attempt_failed")
        assert failure(event).error_code == "CANCELED"
    async with running_worker(tmp_path, answer_png, monkeypatch) as h:
        await asyncio.sleep(0.3)
        assert h.calls == []  # nothing left to run
        assert len(await h.emitted("job.attempt_failed")) == 1


async def test_restart_runs_an_interrupted_item_again(tmp_path: Path, monkeypatch: Any) -> None:
    async with running_worker(tmp_path, answer_png, monkeypatch, start=False) as h:
        await h.deliver(dispatched("job_again"))  # accepted, then the worker was killed
    async with running_worker(tmp_path, answer_png, monkeypatch) as h:
        await h.wait_for("job.completed")


async def test_sandbox_timeout_holds_until_the_deadline(tmp_path: Path, monkeypatch: Any) -> None:
    async with running_worker(tmp_path, answer_png, monkeypatch) as h:
        made = asyncio.get_running_loop().time()  # the deadline counts from the dispatch's making
        await h.deliver(
            dispatched("job_t", sandbox=True, outcome="timeout", delay_ms=0, deadline_s=0.5)
        )
        (event,) = await h.wait_for("job.attempt_failed", timeout_s=5)
        # not before the deadline (less a millisecond: wall clock against the loop's clock)
        assert asyncio.get_running_loop().time() - made >= 0.499
        assert (failure(event).error_code, failure(event).retryable) == ("TIMEOUT", False)
        assert h.calls == []  # Triton was never asked


async def test_sandbox_answers_every_kind(tmp_path: Path, monkeypatch: Any) -> None:
    async with running_worker(tmp_path, answer_png, monkeypatch) as h:
        for index, model in enumerate(
            [
                "kiln/prompt-to-image",
                "kiln/image-edit",
                "kiln/image-to-video",
                "kiln/text-to-speech",
            ]
        ):
            await h.deliver(dispatched(f"job_s{index}", model, {}, sandbox=True, delay_ms=10))
        await h.wait_for("job.completed", 4)
        kinds = sorted(request["kind"] for model, request in h.calls)
        assert {model for model, _ in h.calls} == {"sandbox"}
        assert kinds == ["audio", "image", "image", "video"]


async def test_model_without_image_url_is_invalid(tmp_path: Path, monkeypatch: Any) -> None:
    async with running_worker(tmp_path, answer_png, monkeypatch) as h:
        await h.deliver(dispatched("job_noimg", "kiln/image-edit", {"prompt": "x"}))
        (event,) = await h.wait_for("job.attempt_failed")
        assert (failure(event).error_code, failure(event).retryable) == ("INVALID_INPUT", False)


async def test_refused_image_url_is_not_retryable(tmp_path: Path, monkeypatch: Any) -> None:
    async with running_worker(tmp_path, answer_png, monkeypatch) as h:
        await h.deliver(
            dispatched(
                "job_ssrf", "kiln/image-edit", {"prompt": "x", "image_url": "http://10.0.0.1/a.png"}
            )
        )
        (event,) = await h.wait_for("job.attempt_failed")
        assert (failure(event).error_code, failure(event).retryable) == (
            "INPUT_IMAGE_REFUSED",
            False,
        )
        assert h.calls == []


async def test_retention_sweep_deletes_old_results(tmp_path: Path, monkeypatch: Any) -> None:
    async with running_worker(
        tmp_path, answer_png, monkeypatch, result_retention_s=3600, retention_sweep_interval_s=3600
    ) as h:
        await h.deliver(dispatched("job_old"))
        await h.deliver(dispatched("job_new"))
        done = await h.wait_for("job.completed", 2)
        keys = {e.job_id: e.message.result.blob_key for e in done}  # type: ignore[attr-defined]
        results = StoredResult.__table__
        await h.db.write(
            lambda c: c.execute(
                update(results)
                .where(results.c.blob_key == keys["job_old"])
                .values(stored_at=datetime.now(UTC) - timedelta(hours=2))
            )
        )
        assert await h.worker.sweep_expired_results() == 1
        assert h.blobs.size(keys["job_old"]) is None
        assert h.blobs.size(keys["job_new"]) is not None
        assert await h.worker.sweep_expired_results() == 0


async def test_metrics_count_latency_by_model_and_triton_errors(
    tmp_path: Path, monkeypatch: Any
) -> None:
    from prometheus_client import REGISTRY

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    latency_before = sample("kiln_inference_duration_seconds_count", model="kiln/text-to-speech")
    errors_before = sample(
        "kiln_inference_errors_total", model="kiln/text-to-speech", code="TRITON_UNAVAILABLE"
    )
    async with running_worker(tmp_path, failing("TRITON_UNAVAILABLE"), monkeypatch) as h:
        await h.deliver(dispatched("job_m", "kiln/text-to-speech", {"text": "hi"}))
        await h.wait_for("job.attempt_failed")
    assert (
        sample("kiln_inference_duration_seconds_count", model="kiln/text-to-speech")
        == latency_before + 1
    )
    assert (
        sample(
            "kiln_inference_errors_total", model="kiln/text-to-speech", code="TRITON_UNAVAILABLE"
        )
        == errors_before + 1
    )
    assert (
        sample("kiln_inference_attempts_total", model="kiln/text-to-speech", outcome="failed") >= 1
    )


async def test_a_cancel_just_after_the_end_leaves_the_completed_result(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """The attempt's end commits (job.completed), then a cancel's batch commits and asks the
    runner to stop the job while the attempt is still finishing: the completed job keeps its
    result (the cancel came too late, and found no item to end)."""

    async def answer(url: str, model: str, request: dict[str, Any], timeout_s: float) -> Any:
        return PNG, "image/png"

    async with running_worker(tmp_path, answer, monkeypatch) as h:
        write = h.driver.write

        async def end_then_cancel(work: Any) -> Any:
            result = await write(work)
            if result is True:  # the attempt's end committed: the cancel's batch follows,
                # on the consumer's task, while the attempt still waits for its answer
                cancel = asyncio.create_task(h.deliver(cancel_requested("job_done")))
                await asyncio.wait({cancel})
            return result

        monkeypatch.setattr(h.driver, "write", end_then_cancel)
        await h.deliver(dispatched("job_done"))
        (completed,) = await h.wait_for("job.completed")
        await asyncio.sleep(0.3)
        assert await h.emitted("job.attempt_failed") == []
        assert h.blobs.size(f"results/{completed.account_id}/job_done.1") is not None


async def test_an_end_whose_commit_went_through_before_an_error_is_not_run_again(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """The end's transaction commits, then its answer is lost (a connection dropped after
    COMMIT): the worker must neither run the model again (a second result under the attempt's
    key, sealed with another file key) nor take the missing item for a cancel and delete the
    result that job.completed announced."""
    calls: list[str] = []

    async def answer(url: str, model: str, request: dict[str, Any], timeout_s: float) -> Any:
        calls.append(model)
        return PNG, "image/png"

    async with running_worker(tmp_path, answer, monkeypatch) as h:
        write = h.driver.write
        lost = {"once": False}

        async def commit_then_lose_the_answer(work: Any) -> Any:
            result = await write(work)
            if result is True and not lost["once"]:
                lost["once"] = True
                raise ConnectionError("connection lost after COMMIT")
            return result

        monkeypatch.setattr(h.driver, "write", commit_then_lose_the_answer)
        await h.deliver(dispatched("job_lost_answer"))
        (completed,) = await h.wait_for("job.completed")
        await asyncio.sleep(1.5)  # the end is tried again after 1 s
        assert lost["once"]
        assert len(calls) == 1, "the model ran once"
        assert await h.emitted("job.completed") == [completed]
        assert decrypted(h, completed) == PNG
        assert await h.db.read(lambda c: repository.items_of_job(c, "job_lost_answer")) == []


async def test_a_cancel_as_the_model_returns_wins(tmp_path: Path, monkeypatch: Any) -> None:
    holder: dict[str, Any] = {}

    async def cancel_then_answer(
        url: str, model: str, request: dict[str, Any], timeout_s: float
    ) -> Any:
        # The cancel commits while the answer is on its way (too late to stop the call).
        h = holder["h"]
        runner, h.inference.runner = h.inference.runner, None
        await h.deliver(cancel_requested("job_late"))
        h.inference.runner = runner
        return PNG, "image/png"

    async with running_worker(tmp_path, cancel_then_answer, monkeypatch) as h:
        holder["h"] = h
        await h.deliver(dispatched("job_late"))
        (event,) = await h.wait_for("job.attempt_failed")
        assert failure(event).error_code == "CANCELED"
        await asyncio.sleep(0.3)  # the attempt ends after the cancel: it says nothing
        assert await h.emitted("job.completed") == []
        assert h.blobs.size(f"results/{event.account_id}/job_late.1") is None
        assert await h.db.read(lambda c: repository.items_of_job(c, "job_late")) == []


def test_a_start_announced_in_a_transaction_that_rolled_back_is_announced_again() -> None:
    """A heartbeat round shares a group commit; when the group rolls back and runs again (a
    transient failure, or another write of the group failing), the attempt's `job.started`
    goes out with the second run instead of turning into a `job.progress`."""
    item = WorkItemRow("item_1", "job_1", "acct_worker", b"", 1)
    attempt = worker_module._Attempt(item, jobs_pb2.JobDispatched())
    first = Unit(cast(Any, None), datetime.now(UTC), "inference")
    announce_attempts(first, [attempt], "worker-1")
    assert [e.topic for e in first.outgoing] == ["job.started"]
    first.rolled_back()
    second = Unit(cast(Any, None), datetime.now(UTC), "inference")
    announce_attempts(second, [attempt], "worker-1")
    assert [e.topic for e in second.outgoing] == ["job.started"]
    third = Unit(cast(Any, None), datetime.now(UTC), "inference")
    announce_attempts(third, [attempt], "worker-1")  # committed: now only progress
    assert [e.topic for e in third.outgoing] == ["job.progress"]
