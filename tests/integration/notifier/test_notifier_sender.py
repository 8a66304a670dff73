"""The sender end to end on a real database and real HTTP: retries with one webhook-id, the
schedule running out, 410, 429 + Retry-After, one terminal webhook per job, per-endpoint
isolation and order, redelivery and test events, and both signatures verified the way a
receiver would (the `standardwebhooks` library for `v1`, `cryptography` for `v1a`)."""

import asyncio
import base64
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from standardwebhooks import Webhook

from kiln_contracts import decode, encode, new_event
from kiln_contracts.v1 import webhooks_pb2
from kiln_notifier import repository
from kiln_notifier.tables import DELIVERED, FAILED
from kiln_runtime.db import WRITE_INTENT
from tests.integration.notifier.conftest import (
    ACCOUNT,
    DEFAULT_SECRET,
    Notifier,
    Receiver,
    endpoint_event,
    job_event,
)

pytestmark = pytest.mark.timeout(120)


def job_id() -> str:
    return f"job_{uuid.uuid4().hex}"


def verify_v1a(public_key_b64: str, headers: dict[str, str], body: bytes) -> bool:
    """What a receiver does with the `v1a` part (the standardwebhooks library only checks v1)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key_b64))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    for part in headers["webhook-signature"].split(" "):
        version, _, signature = part.partition(",")
        if version == "v1a":
            try:
                key.verify(base64.b64decode(signature), signed)
            except Exception:
                return False
            return True
    return False


def public_half(private_b64: str) -> str:
    key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(private_b64))
    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


async def test_fails_twice_then_succeeds_with_one_webhook_id(
    notifier: Notifier, receiver: Callable[..., Receiver]
) -> None:
    hook = receiver(500, 503, 204)
    [delivery_id] = await notifier.feed(job_event("job.completed", job_id(), hook.url))

    async def delivered() -> bool:
        return any(d.status == DELIVERED for d in await notifier.deliveries())

    await notifier.run_until(delivered)
    got = hook.got()
    assert len(got) == 3
    assert len({r.headers["webhook-id"] for r in got}) == 1
    assert [a.status_code for a in await notifier.attempts(delivery_id)] == [500, 503, 204]
    # Both signatures verify on every attempt, v1 with the Standard Webhooks library.
    for request in got:
        Webhook(DEFAULT_SECRET).verify(request.body, request.headers)
        assert verify_v1a(public_half(notifier.signing_key_b64), request.headers, request.body)
        assert request.headers["webhook-signature"].startswith("v1,")
        assert " v1a," in request.headers["webhook-signature"]
    attempted = await notifier.emitted("webhook.attempted")
    # Attempts followed by a retry are told one by one; the last one rides on the final event.
    assert [(a.attempt, a.status_code, a.outcome) for a in attempted] == [
        (1, 500, "retrying"),
        (2, 503, "retrying"),
    ]
    assert all(a.HasField("next_attempt_at") for a in attempted)
    [delivered] = await notifier.emitted("webhook.delivered")
    assert (delivered.attempt, delivered.status_code) == (3, 204)
    assert delivered.final_attempt.status_code == 204
    assert delivered.final_attempt.HasField("attempted_at")
    assert not await notifier.emitted("webhook.failed")


async def test_down_for_the_whole_schedule_ends_in_webhook_failed(
    notifier: Notifier, receiver: Callable[..., Receiver]
) -> None:
    hook = receiver(502)
    [delivery_id] = await notifier.feed(job_event("job.failed", job_id(), hook.url))

    async def failed() -> bool:
        return any(d.status == FAILED for d in await notifier.deliveries())

    await notifier.run_until(failed)
    attempts = await notifier.attempts(delivery_id)
    assert len(attempts) == 1 + len(notifier.settings.retry_schedule_s)
    assert len(hook.got()) == len(attempts)
    [failed_event] = await notifier.emitted("webhook.failed")
    assert failed_event.attempts == 3 and failed_event.last_status_code == 502
    assert failed_event.final_attempt.status_code == 502
    assert [a.outcome for a in await notifier.emitted("webhook.attempted")] == [
        "retrying",
        "retrying",
    ]


async def test_connection_refused_is_retried_then_fails(notifier: Notifier) -> None:
    [delivery_id] = await notifier.feed(
        job_event("job.completed", job_id(), "http://127.0.0.1:9/nothing-listens")
    )

    async def failed() -> bool:
        return any(d.status == FAILED for d in await notifier.deliveries())

    await notifier.run_until(failed)
    attempts = await notifier.attempts(delivery_id)
    assert len(attempts) == 3
    assert all(a.status_code is None and a.error for a in attempts)


async def test_redirect_is_not_followed(
    notifier: Notifier, receiver: Callable[..., Receiver]
) -> None:
    target = receiver(204)
    hook = receiver((302, {"location": target.url}, 0.0))
    await notifier.feed(job_event("job.completed", job_id(), hook.url))

    async def failed() -> bool:
        return any(d.status == FAILED for d in await notifier.deliveries())

    await notifier.run_until(failed)
    assert len(hook.got()) == 3 and target.got() == []


async def test_410_disables_the_endpoint(
    notifier: Notifier, receiver: Callable[..., Receiver]
) -> None:
    hook = receiver(410)
    await notifier.feed(endpoint_event("we_gone", hook.url, DEFAULT_SECRET))
    await notifier.feed(job_event("job.completed", job_id()))

    async def failed() -> bool:
        return any(d.status == FAILED for d in await notifier.deliveries())

    await notifier.run_until(failed)
    assert len(hook.got()) == 1  # no retries after a 410
    # A later job sends it nothing; an update of the endpoint (the gateway's) re-enables it.
    assert await notifier.feed(job_event("job.completed", job_id())) == []
    await notifier.feed(endpoint_event("we_gone", hook.url, ""))
    assert len(await notifier.feed(job_event("job.completed", job_id()))) == 1


async def test_429_waits_for_retry_after(
    notifier: Notifier, receiver: Callable[..., Receiver]
) -> None:
    hook = receiver((429, {"retry-after": "1"}, 0.0), 204)
    await notifier.feed(job_event("job.completed", job_id(), hook.url))

    async def delivered() -> bool:
        return any(d.status == DELIVERED for d in await notifier.deliveries())

    await notifier.run_until(delivered)
    first, second = hook.got()
    assert second.at - first.at >= 0.95  # the schedule says 0.2 s; Retry-After says 1 s


async def test_one_terminal_webhook_per_job(
    notifier: Notifier, receiver: Callable[..., Receiver]
) -> None:
    hook = receiver(204)
    job = job_id()
    assert len(await notifier.feed(job_event("job.failed", job, hook.url))) == 1
    # A late job.completed (a worker that finished after the job was failed) announces nothing.
    assert await notifier.feed(job_event("job.completed", job, hook.url)) == []
    assert await notifier.feed(job_event("job.canceled", job, hook.url)) == []

    async def delivered() -> bool:
        return all(d.status == DELIVERED for d in await notifier.deliveries())

    await notifier.run_until(delivered)
    [request] = hook.got()
    assert request.body.startswith(b'{"type":"job.failed"')


async def test_a_slow_endpoint_does_not_delay_the_others(
    notifier: Notifier, receiver: Callable[..., Receiver]
) -> None:
    slow = receiver((204, {}, 1.5))
    fast = receiver(204)
    for _ in range(12):  # more than the sender's 16 slots would take from one URL unchecked
        await notifier.feed(job_event("job.completed", job_id(), slow.url))
    fast_jobs = [job_id() for _ in range(3)]
    for job in fast_jobs:
        await notifier.feed(job_event("job.completed", job, fast.url))

    async def fast_done() -> bool:
        return len(fast.got()) == 3

    await notifier.run_until(fast_done)
    # The fast endpoint finished while the slow backlog (12 x 1.5 s, a few at a time) was still
    # far from drained: it did not wait behind it. Counted, not timed, so load cannot flake it.
    limit = notifier.settings.max_concurrent_per_endpoint
    assert len(slow.got()) <= 2 * limit < 12


async def test_the_sender_stops_when_cancelled_just_as_it_is_woken(
    notifier: Notifier, receiver: Callable[..., Receiver]
) -> None:
    """A cancel that lands in the loop turn after the sender's wake-up event was set: with
    `asyncio.wait_for` (Python 3.11) the cancellation was dropped and `run()` polled on for
    ever, so the service's shutdown hung (and, by chance, the test above)."""
    hook = receiver(204)
    await notifier.feed(job_event("job.completed", job_id(), hook.url))
    # No poll within the test: once the delivery is out, the sender is surely in its wait.
    sender = notifier.sender(notifier.settings.model_copy(update={"delivery_poll_interval_s": 60}))
    notifier.handlers.sender = sender
    task = asyncio.create_task(sender.run())
    try:
        for _ in range(500):
            if hook.got():
                break
            await asyncio.sleep(0.02)
        assert hook.got(), "the delivery was not sent"
        await asyncio.sleep(0.3)  # the delivery's answer recorded: idle, waiting for a wake-up
        sender.wake()
        await asyncio.sleep(0)  # the wait's inner task ends; its waiter is not yet released
        task.cancel()
        stopped, _ = await asyncio.wait({task}, timeout=5)
        assert stopped, "the sender ignored its cancellation"
    finally:
        notifier.handlers.sender = None
        task.cancel()


async def test_a_backlog_for_one_endpoint_drains_as_its_slots_free_not_at_the_polls_pace(
    notifier: Notifier, receiver: Callable[..., Receiver]
) -> None:
    hook = receiver(204)
    limit = notifier.settings.max_concurrent_per_endpoint
    for _ in range(3 * limit):  # waiting in the database: more than the endpoint may take at once
        await notifier.feed(job_event("job.completed", job_id(), hook.url))
    # No poll within the test: only a freed slot can make the sender look for the rest.
    patient = notifier.sender(
        notifier.settings.model_copy(update={"delivery_poll_interval_s": 3600})
    )

    async def all_delivered() -> bool:
        # The receiver answers before the sender records the answer: wait for both.
        return len(hook.got()) == 3 * limit and all(
            d.status == DELIVERED for d in await notifier.deliveries()
        )

    await notifier.run_until(all_delivered, sender=patient)
    assert len(hook.got()) == 3 * limit


async def test_redelivery_sends_the_same_webhook_id_again(
    notifier: Notifier, receiver: Callable[..., Receiver]
) -> None:
    hook = receiver(204)
    [delivery_id] = await notifier.feed(job_event("job.completed", job_id(), hook.url))

    async def sent(count: int) -> bool:
        return len(hook.got()) >= count and all(
            d.status == DELIVERED for d in await notifier.deliveries()
        )

    await notifier.run_until(lambda: sent(1))
    request = decode(
        encode(
            new_event(
                "webhook.redelivery_requested",
                webhooks_pb2.WebhookRedeliveryRequested(delivery_id=delivery_id),
                account_id=ACCOUNT,
            )
        )
    )
    await notifier.feed(request)
    await notifier.run_until(lambda: sent(2))
    first, again = hook.got()
    assert first.headers["webhook-id"] == again.headers["webhook-id"]
    assert first.body == again.body
    assert [a.attempt for a in await notifier.attempts(delivery_id)] == [1, 2]
    # Another account cannot redeliver it.
    foreign = decode(
        encode(
            new_event(
                "webhook.redelivery_requested",
                webhooks_pb2.WebhookRedeliveryRequested(delivery_id=delivery_id),
                account_id="acct_other",
            )
        )
    )
    await notifier.feed(foreign)
    [delivery] = [d for d in await notifier.deliveries() if d.id == delivery_id]
    assert delivery.status == DELIVERED and delivery.attempts == 2  # not made due again


async def test_test_event_goes_to_the_endpoint(
    notifier: Notifier, receiver: Callable[..., Receiver]
) -> None:
    hook = receiver(204)
    secret = "whsec_" + base64.b64encode(b"\x09" * 32).decode()
    await notifier.feed(endpoint_event("we_test", hook.url, secret))
    event = decode(
        encode(
            new_event(
                "webhook.test_requested",
                webhooks_pb2.WebhookTestRequested(endpoint_id="we_test", test_id="msg_abc"),
                account_id=ACCOUNT,
            )
        )
    )
    assert len(await notifier.feed(event)) == 1

    async def got_it() -> bool:
        return len(hook.got()) == 1

    await notifier.run_until(got_it)
    [request] = hook.got()
    assert request.headers["webhook-id"] == "msg_abc"
    payload = Webhook(secret).verify(request.body, request.headers)
    assert payload["type"] == "webhook.test"
    assert payload["data"]["endpoint_id"] == "we_test"


async def test_events_of_one_job_keep_their_order_per_endpoint(
    notifier: Notifier, receiver: Callable[..., Receiver]
) -> None:
    """A test event and a job event to one endpoint are independent; two deliveries of one job
    to one target go in order: the second waits while the first is retried."""
    hook = receiver(500, 204)
    job = job_id()
    await notifier.feed(endpoint_event("we_order", hook.url, DEFAULT_SECRET))
    [first] = await notifier.feed(job_event("job.completed", job))
    # A second delivery of the same job to the same endpoint (a non-terminal type would be
    # one; here a hand-made row stands in for it).
    from kiln_notifier import repository
    from kiln_notifier.deliveries import DeliveryTarget

    await asyncio.sleep(0.01)
    [second] = await notifier.db.write(
        lambda connection: repository.add_deliveries(
            connection,
            notifier.tables,
            webhook_id="evt_later",
            account_id=ACCOUNT,
            job_id=job,
            event_type="job.note",
            payload='{"type":"job.note"}',
            targets=[DeliveryTarget("we_order", hook.url)],
            trace_id="",
            now=datetime.now(UTC),
        )
    )

    async def both() -> bool:
        return all(d.status == DELIVERED for d in await notifier.deliveries())

    await notifier.run_until(both)
    ids = [r.headers["webhook-id"] for r in hook.got()]
    assert ids[-1] == "evt_later"
    assert ids.count("evt_later") == 1 and len(ids) == 3  # first: 500, first: 204, second
    assert second and first


async def test_a_recorded_delivery_is_sent_at_once_not_at_the_next_poll(
    notifier: Notifier, receiver: Callable[..., Receiver]
) -> None:
    # The handler writes the delivery claimed and hands it to the sender once its batch
    # committed (kiln_notifier.handlers); with a poll of a minute, a delivery recorded while
    # the sender sleeps goes out soon only because of that.
    settings = notifier.settings.model_copy(update={"delivery_poll_interval_s": 60.0})
    sender = notifier.sender(settings)
    hook = receiver(204)

    async def record_then_wake() -> None:
        await asyncio.sleep(0.3)  # the sender found nothing due and sleeps
        await notifier.feed(job_event("job.completed", job_id(), hook.url))

    async def sent() -> bool:
        return bool(hook.got())

    feeding = asyncio.create_task(record_then_wake())
    await notifier.run_until(sent, timeout_s=15, sender=sender)
    await feeding
    assert len(hook.got()) == 1


async def test_a_first_attempt_signs_with_the_secret_its_batch_read_and_a_retry_reads_it_again(
    notifier: Notifier, receiver: Callable[..., Receiver], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The handler reads the secret inside the batch's transaction, so the attempt sent right
    # after the commit needs no read transaction of its own; a retry reads the secret again and
    # signs with what is current then (here: the account's default secret, rotated meanwhile).
    lookups: list[bool] = []  # per lookup: whether it ran in a write (the batch's) transaction
    signing_secret = repository.signing_secret

    def counted(connection: Any, *args: Any, **kwargs: Any) -> repository.SecretLookup:
        lookups.append(bool(connection.info.get(WRITE_INTENT)))
        return signing_secret(connection, *args, **kwargs)

    monkeypatch.setattr(repository, "signing_secret", counted)
    sender = notifier.sender(notifier.settings.model_copy(update={"retry_schedule_s": [1.0]}))
    hook = receiver(500, 204)
    rotated = "whsec_" + base64.b64encode(b"\x09" * 32).decode()

    async def complete_then_rotate() -> None:
        await notifier.feed(job_event("job.completed", job_id(), hook.url))
        for _ in range(500):  # up to 10 s for the first attempt
            if hook.got():
                break
            await asyncio.sleep(0.02)
        # every read so far ran in the batch's transaction (the test driver runs each batch
        # twice, the first time rolled back: kiln_runtime.testing)
        assert lookups and all(lookups)
        await notifier.feed(endpoint_event(f"default_{ACCOUNT}", secret=rotated, is_default=True))

    async def delivered() -> bool:
        return any(d.status == DELIVERED for d in await notifier.deliveries())

    feeding = asyncio.create_task(complete_then_rotate())
    await notifier.run_until(delivered, sender=sender)
    await feeding
    first, second = hook.got()
    Webhook(DEFAULT_SECRET).verify(first.body, first.headers)
    Webhook(rotated).verify(second.body, second.headers)
    assert lookups[-1] is False and lookups.count(False) == 1, lookups


async def test_an_endpoint_deleted_later_in_the_same_batch_gets_no_first_attempt(
    notifier: Notifier, receiver: Callable[..., Receiver]
) -> None:
    # The first attempt's secret is read once every handler of the batch ran, so an endpoint
    # the batch deletes after the job's event is seen deleted, as when each attempt read it
    # after the commit. (Read by the job's handler itself, the delivery went out.)
    hook = receiver(204)
    endpoint = "ep_deleted_in_batch"
    await notifier.feed(
        endpoint_event(endpoint, hook.url, DEFAULT_SECRET, event_types=("job.completed",))
    )

    async def complete_then_delete() -> None:
        await notifier.driver.process_batch(
            [job_event("job.completed", job_id()), endpoint_event(endpoint, hook.url, deleted=True)]
        )

    async def failed() -> bool:
        return any(
            d.endpoint_id == endpoint and d.status == FAILED for d in await notifier.deliveries()
        )

    feeding = asyncio.create_task(complete_then_delete())
    await notifier.run_until(failed)
    await feeding
    assert hook.got() == []


async def test_one_terminal_webhook_per_job_when_both_ends_come_in_one_batch(
    notifier: Notifier, receiver: Callable[..., Receiver]
) -> None:
    # The first end's delivery, recorded earlier in the same transaction, must count for the
    # second (a late job.completed of a worker after the job was failed).
    hook = receiver(204)
    job = job_id()
    await notifier.driver.process_batch(
        [job_event("job.failed", job, hook.url), job_event("job.completed", job, hook.url)]
    )
    [delivery] = await notifier.deliveries()
    assert delivery.event_type == "job.failed"


async def test_an_endpoint_added_earlier_in_the_same_batch_gets_the_jobs_end(
    notifier: Notifier, receiver: Callable[..., Receiver]
) -> None:
    # The batch reads the account's endpoints at its start; an endpoint the batch adds before
    # the job's end counts, as when each end read them itself.
    hook = receiver(204)
    endpoint = "ep_added_in_batch"
    job = job_id()
    await notifier.driver.process_batch(
        [
            endpoint_event(endpoint, hook.url, DEFAULT_SECRET, event_types=("job.completed",)),
            job_event("job.completed", job),
        ]
    )
    [delivery] = await notifier.deliveries()
    assert (delivery.endpoint_id, delivery.job_id) == (endpoint, job)
