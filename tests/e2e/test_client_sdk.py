"""The Python SDK (`kiln_client`) against the whole local stack: every method of `Kiln`, and
`AsyncKiln` for the same paths, with real jobs, real encrypted results and real webhooks."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from kiln_client import (
    AsyncKiln,
    Conflict,
    ContentPolicy,
    DecryptionError,
    InsufficientCredits,
    Job,
    JobCanceled,
    JobFailed,
    Kiln,
    NotFound,
    Unauthorized,
    ValidationError,
    WaitTimeout,
    verify_webhook,
)
from tests.e2e.client_support import Account, new_account
from tests.e2e.client_support import webhook_receiver as own_receiver
from tests.e2e.conftest import WebhookReceiver

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

IMAGE = "kiln/prompt-to-image"
SPEECH = "kiln/text-to-speech"


@pytest.fixture(scope="module")
def webhook_receiver() -> Iterator[WebhookReceiver]:
    with own_receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def account(stack: dict[str, str]) -> Account:
    return new_account(stack)


@pytest.fixture
def sandbox(stack: dict[str, str], account: Account) -> Kiln:
    return Kiln(account.sandbox_key, base_url=stack["KILN_API_URL"])


@pytest.fixture
def live(stack: dict[str, str], account: Account) -> Kiln:
    return Kiln(account.live_key, base_url=stack["KILN_API_URL"])


def is_png(data: bytes) -> bool:
    Image.open(io.BytesIO(data)).verify()
    return data.startswith(b"\x89PNG")


def wait_until(check: Any, what: str, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_run_with_progress_and_decrypted_result(sandbox: Kiln, tmp_path: Path) -> None:
    updates: list[Job] = []
    job = sandbox.run(
        IMAGE,
        {"prompt": "a lighthouse in a storm", "seed": 7},
        metadata={"order": "1"},
        on_update=updates.append,
        timeout=120,
    )
    assert job.status == "completed" and job.sandbox and job.metadata == {"order": "1"}
    assert updates[-1].status == "completed" and updates[0].status in ("pending", "queued")
    assert job.result is not None and job.result.content_type == "image/png"
    saved = job.result.save(tmp_path / "lighthouse.png")
    assert is_png(saved.read_bytes())
    assert job.result.read() == saved.read_bytes()
    assert b"".join(job.result.iter_bytes()) == saved.read_bytes()
    with pytest.raises(DecryptionError):
        job.result.save(tmp_path / "wrong.png", secret="sk_test_not_the_secret")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lighthouse.png"]


def test_live_job_is_charged_and_decrypts(live: Kiln, tmp_path: Path) -> None:
    before = live.usage.get()
    assert before.balance is not None
    before_balance = before.balance
    quote = live.jobs.quote(SPEECH, {"text": "hello from the client"})
    assert quote.price == Decimal("2") and not quote.sandbox
    job = live.run(SPEECH, {"text": "hello from the client"}, timeout=300)
    assert job.cost == Decimal("2")
    assert job.result is not None
    audio = job.result.read()
    assert audio[:4] == b"RIFF" and audio[8:12] == b"WAVE"
    after = wait_until(
        lambda: (u := live.usage.get()).balance == before_balance - 2 and u, "the charge"
    )
    assert after.spent_this_period == (before.spent_this_period or 0) + 2


def test_submit_handle_iterates_and_refreshes(sandbox: Kiln) -> None:
    handle = sandbox.submit(IMAGE, {"prompt": "a red kite"})
    assert handle.status in ("pending", "queued")
    statuses = [job.status for job in handle]
    assert statuses[-1] == "completed" and handle.status == "completed"
    assert handle.refresh().status == "completed"
    assert handle.wait().status == "completed"


def test_respond_async_answers_pending_or_queued(sandbox: Kiln) -> None:
    # `Prefer: respond-async` answers `pending` at once where the server supports it; a server
    # that does not yet answers after billing (`queued`): the client handles both.
    handle = sandbox.submit(IMAGE, {"prompt": "a blue kite"}, respond_async=True)
    assert handle.status in ("pending", "queued")
    assert handle.wait(timeout=120).status == "completed"


def test_failed_and_timed_out_jobs_raise_with_the_job(sandbox: Kiln) -> None:
    with pytest.raises(JobFailed) as failed:
        sandbox.run(IMAGE, {"prompt": "p"}, sandbox={"outcome": "failed"}, timeout=120)
    assert failed.value.job.status == "failed" and failed.value.job.error is not None
    with pytest.raises(JobFailed) as overdue:
        sandbox.run(
            IMAGE, {"prompt": "p"}, sandbox={"outcome": "timeout", "delay_s": 1}, timeout=120
        )
    assert overdue.value.code == "TIMEOUT"


def test_cancel_and_wait_timeout(sandbox: Kiln) -> None:
    handle = sandbox.submit(IMAGE, {"prompt": "slow"}, sandbox={"delay_s": 120})
    canceled = handle.cancel()
    assert canceled.status in ("canceling", "canceled")
    with pytest.raises(JobCanceled) as caught:
        handle.wait(timeout=120)
    assert caught.value.job.status == "canceled" and caught.value.job.cost == 0
    with pytest.raises(Conflict):
        sandbox.jobs.cancel(handle.id)

    with pytest.raises(WaitTimeout) as timed_out:
        sandbox.run(
            IMAGE,
            {"prompt": "slower"},
            sandbox={"delay_s": 120},
            timeout=3,
            cancel_on_timeout=True,
        )
    assert timed_out.value.job.status in ("canceling", "canceled")
    job_id = timed_out.value.job.id
    wait_until(lambda: sandbox.jobs.get(job_id).status == "canceled", "the cancel", 120)


def test_list_count_and_paging(sandbox: Kiln) -> None:
    for n in range(5):
        sandbox.jobs.create(IMAGE, {"prompt": f"paging {n}"}, metadata={"batch": "paging"})
    listed = list(sandbox.jobs.list(per_page=2))
    total = sandbox.jobs.count()
    assert len(listed) == total >= 5
    assert len({job.id for job in listed}) == len(listed)
    created = [job.created_at.isoformat() for job in listed if job.created_at]
    assert created == sorted(created, reverse=True)  # newest first
    assert len(list(sandbox.jobs.list(per_page=2, limit=3))) == 3
    first = sandbox.jobs.list(per_page=2).first()
    assert first.total_results == total and first.total_pages == -(-total // 2)
    oldest = next(iter(sandbox.jobs.list(sort="created_at", per_page=1)))
    assert oldest.id == listed[-1].id

    # Jobs finish while they are counted and listed: compare once the count held still.
    def count_and_listed() -> tuple[int, int] | None:
        before = sandbox.jobs.count(status="completed", model=IMAGE)
        listed = len(list(sandbox.jobs.list(status="completed", model=IMAGE)))
        same = sandbox.jobs.count(status="completed", model=IMAGE) == before
        return (before, listed) if same else None

    completed, listed_completed = wait_until(count_and_listed, "a count that holds still")
    assert completed == listed_completed


def test_events_follow_the_cursor(sandbox: Kiln) -> None:
    cursor = sandbox.events.latest_cursor()
    job = sandbox.run(IMAGE, {"prompt": "events"}, timeout=120)

    def seen() -> list[str]:
        return [e.type for e in sandbox.events.iter(after=cursor) if e.job_id == job.id]

    types = wait_until(lambda: "job.completed" in seen() and seen(), "the job's events")
    assert types[0] == "job.created" and "job.completed" in types
    ids = [int(e.id) for e in sandbox.events.iter(after=cursor)]
    assert ids == sorted(ids) and ids[0] > int(cursor)


def test_catalog_and_usage(sandbox: Kiln) -> None:
    models = {m.id: m for m in sandbox.models.list()}
    assert models[IMAGE].kind == "image" and models[IMAGE].price == Decimal("5")
    assert sandbox.models.get(SPEECH).input_schema["required"] == ["text"]
    with pytest.raises(NotFound):
        sandbox.models.get("kiln/no-such-model")
    usage = sandbox.usage.get()
    assert usage.balance is not None and "sandbox" in usage.jobs
    stats = sandbox.usage.stats(group_by="model")
    assert stats.group_by == "model" and any(r.key == IMAGE for r in stats.rows)


def test_typed_errors(stack: dict[str, str], sandbox: Kiln) -> None:
    with pytest.raises(ValidationError) as invalid:
        sandbox.jobs.create("kiln/no-such-model", {})
    assert invalid.value.status == 422 and invalid.value.details[0]["field"] == "model"
    assert invalid.value.request_id and invalid.value.request_id.startswith("req_")
    with pytest.raises(ValidationError) as missing:
        sandbox.jobs.create(IMAGE, {})
    assert any(d["field"] == "input.prompt" for d in missing.value.details)
    with pytest.raises(ContentPolicy):
        sandbox.jobs.create(IMAGE, {"prompt": "a portrait photo of Taylor Swift"})
    with pytest.raises(NotFound):
        sandbox.jobs.get("job_" + "0" * 32)
    with pytest.raises(Unauthorized):
        Kiln("sk_test_nope", base_url=stack["KILN_API_URL"]).usage.get()
    broke = new_account(stack, credits="0")
    with pytest.raises(InsufficientCredits) as poor:
        Kiln(broke.live_key, base_url=stack["KILN_API_URL"]).run(IMAGE, {"prompt": "p"})
    assert poor.value.status == 402 and poor.value.code == "INSUFFICIENT_CREDITS"


def test_job_webhook_verifies_and_its_result_downloads(
    sandbox: Kiln, webhook_receiver: WebhookReceiver, tmp_path: Path
) -> None:
    job = sandbox.run(IMAGE, {"prompt": "a webhook"}, webhook_url=webhook_receiver.url, timeout=120)
    delivery = wait_until(lambda: webhook_receiver.for_job(job.id), "the webhook")[0]
    secret = sandbox.webhooks.default_secret()
    public_key = sandbox.webhooks.public_key()
    event = sandbox.verify_webhook(
        delivery.body, delivery.headers, secret=secret, public_key=public_key
    )
    assert event.type == "job.completed" and event.job is not None
    assert event.id == delivery.headers["webhook-id"]
    assert event.job.result is not None
    assert is_png(event.job.result.save(tmp_path / "from-webhook.png").read_bytes())
    forged = dict(delivery.headers)
    with pytest.raises(Exception, match="v1"):
        verify_webhook(delivery.body + b" ", forged, secret=secret)


def test_webhook_endpoints_and_deliveries(sandbox: Kiln, webhook_receiver: WebhookReceiver) -> None:
    endpoint = sandbox.webhooks.create(
        webhook_receiver.url, event_types=["job.completed"], description="sdk e2e"
    )
    assert endpoint.secret and endpoint.secret.startswith("whsec_")
    assert endpoint.id in {e.id for e in sandbox.webhooks.list()}
    assert sandbox.webhooks.get(endpoint.id).secret is None
    updated = sandbox.webhooks.update(endpoint.id, description="renamed")
    assert updated.description == "renamed" and updated.event_types == ["job.completed"]

    test = sandbox.webhooks.test(endpoint.id)
    got = wait_until(
        lambda: [
            r for r in webhook_receiver.received if r.headers.get("webhook-id") == test.test_id
        ],
        "the test event",
    )
    event = verify_webhook(
        got[0].body,
        got[0].headers,
        secret=endpoint.secret,
        public_key=sandbox.webhooks.public_key(),
    )
    assert event.type == "webhook.test"

    deliveries = wait_until(
        lambda: list(sandbox.webhooks.deliveries.list(endpoint_id=endpoint.id)), "the log"
    )
    delivery = sandbox.webhooks.deliveries.get(deliveries[0].id)
    assert delivery.attempts and delivery.status in ("delivered", "retrying")
    again = sandbox.webhooks.deliveries.redeliver(delivery.id)
    assert again.webhook_id == delivery.webhook_id and again.status == "requested"
    wait_until(
        lambda: (
            len(
                [
                    r
                    for r in webhook_receiver.received
                    if r.headers.get("webhook-id") == test.test_id
                ]
            )
            >= 2
        ),
        "the redelivery",
    )
    sandbox.webhooks.delete(endpoint.id)
    with pytest.raises(NotFound):
        sandbox.webhooks.get(endpoint.id)


def test_keys_with_a_session(stack: dict[str, str], account: Account) -> None:
    kiln = Kiln(base_url=stack["KILN_API_URL"])
    session = kiln.login(account.email, account.password)
    assert session.token and kiln.session_token == session.token
    made = kiln.keys.create("sdk e2e", sandbox=True)
    assert made.secret and made.secret.startswith("sk_test_") and made.kind == "sandbox"
    assert made.id in {k.id for k in kiln.keys.list()}
    rotated = kiln.keys.rotate(made.id)
    assert rotated.rotated_from == made.id and rotated.secret != made.secret
    with pytest.raises(Unauthorized):
        Kiln(made.secret, base_url=stack["KILN_API_URL"]).usage.get()
    user = Kiln(rotated.secret, base_url=stack["KILN_API_URL"])
    assert user.usage.get().balance is not None
    assert kiln.keys.revoke(rotated.id).revoked_at is not None
    with pytest.raises(Unauthorized):
        user.usage.get()
    assert rotated.id in {k.id for k in kiln.keys.list(include_revoked=True)}


async def test_async_twin(stack: dict[str, str], account: Account, tmp_path: Path) -> None:
    async with AsyncKiln(account.sandbox_key, base_url=stack["KILN_API_URL"]) as kiln:
        seen: list[str] = []
        job = await kiln.run(
            IMAGE, {"prompt": "async"}, on_update=lambda j: seen.append(j.status), timeout=120
        )
        assert job.status == "completed" and seen[-1] == "completed"
        assert job.result is not None
        saved = await job.result.save(tmp_path / "async.png")
        assert is_png(saved.read_bytes())
        handle = await kiln.submit(IMAGE, {"prompt": "async handle"})
        assert [j.status async for j in handle][-1] == "completed"
        assert (await handle.refresh()).status == "completed"
        with pytest.raises(JobFailed):
            await kiln.run(IMAGE, {"prompt": "p"}, sandbox={"outcome": "failed"}, timeout=120)
        listed = [j.id async for j in kiln.jobs.list(per_page=3)]
        assert len(listed) == await kiln.jobs.count()
        events = [e async for e in kiln.events.iter(after="0")]
        assert any(e.job_id == job.id and e.type == "job.completed" for e in events)
        assert (await kiln.jobs.quote(IMAGE, {"prompt": "p"})).sandbox
        assert any(m.id == IMAGE for m in await kiln.models.list())
        assert (await kiln.usage.get()).balance is not None
        assert (await kiln.webhooks.default_secret()).startswith("whsec_")
