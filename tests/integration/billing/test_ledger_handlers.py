"""Billing's handlers behind the runtime's EventProcessor (inbox, outbox, one transaction per
event) on real databases, SQLite and PostgreSQL: never negative, never twice."""

import asyncio
import itertools

import pytest
from sqlalchemy import insert, update

from kiln_billing.tables import AccountBalance, LedgerPosting, LedgerTransaction
from kiln_contracts import Event
from kiln_contracts.v1 import credits_pb2
from kiln_runtime.catalog import load_catalog
from kiln_runtime.db import SessionFactory, transaction
from tests.integration.billing.billing_events import (
    IMAGE,
    IMAGE_PRICE,
    bookings_by_job,
    check_ledger,
    emitted,
    emitted_types,
    ended,
    grant,
    new_account,
    new_job,
    processor,
    sound_ledger,
    submitted,
)

pytestmark = pytest.mark.integration


async def balances(sessions: SessionFactory, account: str) -> tuple[int, int, int, int]:
    async with sessions() as session:
        row = await session.get(AccountBalance, account)
    assert row is not None
    return (
        row.granted_millicredits,
        row.available_millicredits,
        row.reserved_millicredits,
        row.spent_millicredits,
    )


async def test_redelivered_events_change_nothing(sessions: SessionFactory) -> None:
    billing = processor(sessions)
    account, job = new_account(), new_job()
    g, s, c = grant(account, 7_000), submitted(account, job), ended("job.completed", account, job)
    for event in (g, g, s, s, c, c):
        await billing.process(event)
    assert await emitted_types(sessions) == [
        "credits.applied",
        "credits.reserved",
        "credits.captured",
    ]
    assert await bookings_by_job(sessions, job) == {"reserve": 1, "capture": 1}
    assert await balances(sessions, account) == (7_000, 2_000, 0, 5_000)
    report = await sound_ledger(sessions)
    assert report.bookings == 3 and report.postings == 6  # every booking has two legs


async def test_a_job_resubmitted_under_a_new_event_id_is_decided_once(
    sessions: SessionFactory,
) -> None:
    billing = processor(sessions)
    account, job = new_account(), new_job()
    await billing.process(grant(account, 7_000))
    await billing.process(submitted(account, job))
    assert await billing.process(submitted(account, job))  # new event id: the inbox lets it in
    assert await emitted_types(sessions) == ["credits.applied", "credits.reserved"]
    assert await balances(sessions, account) == (7_000, 2_000, 5_000, 0)


async def test_too_few_credits_rejects_and_a_failure_refunds_once(
    sessions: SessionFactory,
) -> None:
    billing = processor(sessions)
    account, job_1, job_2 = new_account(), new_job(), new_job()
    await billing.process(grant(account, 7_000))
    await billing.process(submitted(account, job_1))  # 5 credits of 7
    await billing.process(submitted(account, job_2))  # 5 more: rejected
    await billing.process(ended("job.failed", account, job_1))
    await billing.process(ended("job.failed", account, job_1))  # a second failure refunds nothing
    await billing.process(ended("job.completed", account, job_1))  # nor charges after a refund
    await billing.process(ended("job.completed", account, job_2))  # a rejected job is never charged
    out = await emitted(sessions)
    assert [e.type for e in out] == [
        "credits.applied",
        "credits.reserved",
        "credits.rejected",
        "credits.released",
    ]
    rejected = out[2].message
    assert isinstance(rejected, credits_pb2.CreditsRejected)
    assert rejected.required_millicredits == IMAGE_PRICE
    assert rejected.balance.available_millicredits == 2_000
    released = out[3].message
    assert isinstance(released, credits_pb2.CreditsReleased)
    assert (released.amount_millicredits, released.reason) == (5_000, "failed")
    assert released.balance.available_millicredits == 7_000
    assert released.balance.reserved_millicredits == 0
    # Each change of the balances is one more version; a rejection changes nothing.
    versions = [getattr(e.message, "balance").version for e in out]  # noqa: B009
    assert versions == [1, 2, 2, 3]
    assert await bookings_by_job(sessions, job_1) == {"reserve": 1, "release": 1}
    assert await bookings_by_job(sessions, job_2) == {}
    await sound_ledger(sessions)


async def test_cancel_refunds_in_full_and_each_event_carries_the_new_balance(
    sessions: SessionFactory,
) -> None:
    billing = processor(sessions)
    account, job = new_account(), new_job()
    await billing.process(grant(account, 12_000))
    await billing.process(submitted(account, job))
    await billing.process(ended("job.canceled", account, job))
    out = await emitted(sessions)
    applied, reserved, released = (e.message for e in out)
    assert isinstance(applied, credits_pb2.CreditsApplied)
    assert applied.balance.available_millicredits == 12_000
    assert isinstance(reserved, credits_pb2.CreditsReserved)
    assert reserved.amount_millicredits == IMAGE_PRICE
    assert (reserved.balance.available_millicredits, reserved.balance.reserved_millicredits) == (
        7_000,
        5_000,
    )
    assert isinstance(released, credits_pb2.CreditsReleased)
    assert released.reason == "canceled"
    assert released.balance.available_millicredits == 12_000
    assert await balances(sessions, account) == (12_000, 12_000, 0, 0)


async def test_sandbox_jobs_are_never_charged_and_counted_apart(sessions: SessionFactory) -> None:
    billing = processor(sessions)
    poor, rich = new_account(), new_account()
    await billing.process(grant(rich, 5_000))
    jobs = [new_job() for _ in range(4)]
    await billing.process(submitted(poor, jobs[0], sandbox=True))  # no credits at all
    await billing.process(ended("job.completed", poor, jobs[0], sandbox=True))
    await billing.process(submitted(rich, jobs[1], sandbox=True))
    await billing.process(ended("job.failed", rich, jobs[1], sandbox=True))
    await billing.process(submitted(rich, jobs[2], sandbox=True))
    await billing.process(submitted(rich, jobs[3]))  # live: charged
    await billing.process(ended("job.completed", rich, jobs[3]))
    assert await emitted_types(sessions, poor) == ["credits.reserved", "credits.captured"]
    for job in jobs[:3]:
        assert await bookings_by_job(sessions, job) == {}
    assert await balances(sessions, poor) == (0, 0, 0, 0)
    assert await balances(sessions, rich) == (5_000, 0, 0, 5_000)
    report = await sound_ledger(sessions)
    assert report.jobs["sandbox"] == {"captured": 1, "released": 1, "reserved": 1}
    assert report.jobs["live"] == {"captured": 1}
    assert report.totals["spent"] == 5_000


async def test_fifty_concurrent_submissions_for_ten_jobs_reserve_exactly_ten(
    sessions: SessionFactory,
) -> None:
    billing = processor(sessions)
    account = new_account()
    await billing.process(grant(account, 10 * IMAGE_PRICE))
    jobs = [new_job() for _ in range(50)]
    results = await asyncio.gather(*(billing.process(submitted(account, j)) for j in jobs))
    assert all(results)
    out = [e for e in await emitted(sessions, account) if e.type != "credits.applied"]
    assert sorted({e.job_id for e in out}) == sorted(jobs)  # one decision per job
    assert len(out) == 50
    reserved = [e for e in out if e.type == "credits.reserved"]
    assert len(reserved) == 10
    assert len([e for e in out if e.type == "credits.rejected"]) == 40
    for e in out:  # no decision ever saw or announced a negative balance
        message = e.message
        assert isinstance(message, credits_pb2.CreditsReserved | credits_pb2.CreditsRejected)
        assert message.balance.available_millicredits >= 0
    assert await balances(sessions, account) == (50_000, 0, 50_000, 0)
    report = await sound_ledger(sessions)
    assert report.jobs["live"] == {"rejected": 40, "reserved": 10}


async def test_concurrent_accounts_do_not_disturb_each_other(sessions: SessionFactory) -> None:
    billing = processor(sessions)
    accounts = [new_account() for _ in range(5)]
    for account in accounts:
        await billing.process(grant(account, 3 * IMAGE_PRICE))
    work = [submitted(a, new_job()) for a in accounts for _ in range(6)]
    await asyncio.gather(*(billing.process(e) for e in work))
    for account in accounts:
        assert await balances(sessions, account) == (15_000, 0, 15_000, 0)
    await sound_ledger(sessions)


async def test_the_price_travels_with_the_reservation(sessions: SessionFactory) -> None:
    before = load_catalog()
    after = before.model_copy(deep=True)
    model = after.model(IMAGE)
    assert model is not None
    model.price = "9"
    account, job = new_account(), new_job()
    await processor(sessions, before).process(grant(account, 20_000))
    await processor(sessions, before).process(submitted(account, job))  # held at 5 credits
    # The catalog changes (billing restarted with a new price) while the job is queued.
    await processor(sessions, after).process(ended("job.completed", account, job, price=9_000))
    out = await emitted(sessions)
    captured = out[-1].message
    assert isinstance(captured, credits_pb2.CreditsCaptured)
    assert captured.amount_millicredits == 5_000
    assert await balances(sessions, account) == (20_000, 15_000, 0, 5_000)
    other = new_job()
    await processor(sessions, after).process(submitted(account, other))  # new jobs: 9 credits
    assert await balances(sessions, account) == (20_000, 6_000, 9_000, 5_000)
    await sound_ledger(sessions)


async def test_a_revocation_takes_at_most_what_is_available(sessions: SessionFactory) -> None:
    billing = processor(sessions)
    account = new_account()
    await billing.process(grant(account, 10_000))
    await billing.process(submitted(account, new_job()))  # 5 held
    await billing.process(grant(account, -20_000))
    applied = (await emitted(sessions))[-1].message
    assert isinstance(applied, credits_pb2.CreditsApplied)
    assert applied.amount_millicredits == -5_000
    assert await balances(sessions, account) == (5_000, 0, 5_000, 0)
    await billing.process(grant(account, -1_000))  # nothing left to take: books nothing
    assert await balances(sessions, account) == (5_000, 0, 5_000, 0)
    await sound_ledger(sessions)


async def test_a_grant_resent_under_a_new_event_id_is_booked_once(
    sessions: SessionFactory,
) -> None:
    billing = processor(sessions)
    account = new_account()
    await billing.process(grant(account, 4_000, grant_id="grant_once"))
    await billing.process(grant(account, 4_000, grant_id="grant_once"))
    assert await emitted_types(sessions) == ["credits.applied"]
    assert await balances(sessions, account) == (4_000, 4_000, 0, 0)


async def test_an_end_before_the_submission_is_remembered_and_never_reserves(
    sessions: SessionFactory,
) -> None:
    billing = processor(sessions)
    account = new_account()
    await billing.process(grant(account, 10_000))
    failed_first, completed_first = new_job(), new_job()
    await billing.process(ended("job.canceled", account, failed_first))
    await billing.process(submitted(account, failed_first))
    await billing.process(ended("job.completed", account, completed_first))
    await billing.process(submitted(account, completed_first))
    # No credits.reserved for an ended job (it would be queued again); the completed one is
    # charged once, at the price of its submission.
    assert await emitted_types(sessions) == ["credits.applied", "credits.captured"]
    assert await bookings_by_job(sessions, failed_first) == {}
    assert await bookings_by_job(sessions, completed_first) == {"charge": 1}
    assert await balances(sessions, account) == (10_000, 5_000, 0, 5_000)
    report = await sound_ledger(sessions)
    assert report.jobs["live"] == {"captured": 1, "void": 1}


async def test_a_job_id_of_another_account_is_ignored(sessions: SessionFactory) -> None:
    billing = processor(sessions)
    owner, other, job = new_account(), new_account(), new_job()
    await billing.process(grant(owner, 5_000))
    await billing.process(grant(other, 5_000))
    await billing.process(submitted(owner, job))
    await billing.process(ended("job.failed", other, job))  # names the wrong account
    await billing.process(submitted(other, job))
    assert await balances(sessions, owner) == (5_000, 0, 5_000, 0)
    assert await balances(sessions, other) == (5_000, 5_000, 0, 0)
    await sound_ledger(sessions)


async def test_verify_finds_a_tampered_cache_and_an_unbalanced_booking(
    sessions: SessionFactory,
) -> None:
    billing = processor(sessions)
    account = new_account()
    await billing.process(grant(account, 5_000))
    await billing.process(submitted(account, new_job()))
    await sound_ledger(sessions)
    async with transaction(sessions) as session:
        await session.execute(
            update(AccountBalance)
            .where(AccountBalance.account_id == account)
            .values(available_millicredits=1_000_000)
        )
    report = await check_ledger(sessions)
    assert not report.ok
    assert any("cached balance" in p for p in report.problems), report.problems
    async with transaction(sessions) as session:
        await session.execute(
            update(AccountBalance)
            .where(AccountBalance.account_id == account)
            .values(available_millicredits=0)
        )
        forged_id = (
            await session.execute(
                insert(LedgerTransaction)
                .values(
                    account_id=account,
                    kind="grant",
                    entry_key="grant:forged",
                    amount_millicredits=7,
                )
                .returning(LedgerTransaction.id)
            )
        ).scalar_one()
        await session.execute(
            insert(LedgerPosting).values(
                transaction_id=forged_id, account_id=account, book="available",
                amount_millicredits=7,
            )
        )  # fmt: skip
    report = await check_ledger(sessions)
    assert any("grant:forged does not balance" in p for p in report.problems), report.problems


# --------------------------------------------------------------------------------------------
# Every order of one job's events, including redeliveries and resubmissions.

EVENT_KINDS = ("submitted", "submitted.again", "job.completed", "job.failed", "job.canceled")


def job_events(account: str, job: str) -> dict[str, Event]:
    return {
        "submitted": submitted(account, job),
        "submitted.again": submitted(account, job),  # a new event id for the same job
        **{kind: ended(kind, account, job) for kind in EVENT_KINDS[2:]},
    }


def expected_outcome(order: tuple[str, ...], funded: bool) -> tuple[list[str], dict[str, int]]:
    """The credits.* events billing emits for the job and its bookings: whatever the order,
    the first end decides, and only a held reservation (or, for a job that completed before its
    submission, an account that can pay at the submission) is ever charged."""
    first_submission = min(i for i, k in enumerate(order) if k.startswith("submitted"))
    first_end = min(i for i, k in enumerate(order) if k.startswith("job."))
    end = order[first_end]
    if first_submission < first_end:
        if not funded:
            return ["credits.rejected"], {}
        if end == "job.completed":
            return ["credits.reserved", "credits.captured"], {"reserve": 1, "capture": 1}
        return ["credits.reserved", "credits.released"], {"reserve": 1, "release": 1}
    if end == "job.completed" and funded:
        return ["credits.captured"], {"charge": 1}
    return [], {}


@pytest.mark.parametrize("funded", [True, False], ids=["funded", "unfunded"])
async def test_every_order_of_a_jobs_events_charges_at_most_once(
    sessions: SessionFactory, funded: bool
) -> None:
    """All 120 orders of (submitted, a resubmission under a new event id, completed, failed,
    canceled), each on an account of its own holding credits for one job (or none), then every
    event redelivered (same event ids) in the reverse order."""
    billing = processor(sessions)
    orders = list(itertools.permutations(EVENT_KINDS))
    cases = [(order, new_account(), new_job()) for order in orders]
    if funded:
        for _, account, _ in cases:
            await billing.process(grant(account, IMAGE_PRICE))

    async def run(order: tuple[str, ...], account: str, job: str) -> None:
        events = job_events(account, job)
        for kind in order:
            await billing.process(events[kind])
        for kind in reversed(order):
            assert not await billing.process(events[kind])  # a redelivery: dropped

    # Cases run side by side (as partitions of different accounts do); one case's events in
    # its order.
    for start in range(0, len(cases), 16):
        await asyncio.gather(*(run(*case) for case in cases[start : start + 16]))

    out = await emitted(sessions)
    by_job: dict[str, list[str]] = {}
    for e in out:
        if e.job_id:
            by_job.setdefault(e.job_id, []).append(e.type)
    for order, _account, job in cases:
        events, bookings = expected_outcome(order, funded)
        assert by_job.get(job, []) == events, order
        assert await bookings_by_job(sessions, job) == bookings, order
    report = await sound_ledger(sessions)
    charged = sum(1 for order, _, _ in cases if expected_outcome(order, funded)[1].get("capture")
                  or expected_outcome(order, funded)[1].get("charge"))  # fmt: skip
    assert report.totals["spent"] == charged * IMAGE_PRICE
    assert report.totals["reserved"] == 0


async def test_the_balances_of_one_batch_are_announced_with_rising_versions(
    sessions: SessionFactory,
) -> None:
    """Billing's events of one batch share their time: the version orders them."""
    billing = processor(sessions)
    account = new_account()
    jobs = [new_job() for _ in range(3)]
    await billing.process_batch(
        [grant(account, 12_000), *(submitted(account, job) for job in jobs)]
    )
    out = await emitted(sessions)
    assert [e.type for e in out] == [
        "credits.applied",
        *["credits.reserved"] * 2,
        "credits.rejected",
    ]
    balances_announced = [getattr(e.message, "balance") for e in out]  # noqa: B009
    assert [b.version for b in balances_announced] == [1, 2, 3, 3]
    assert [b.available_millicredits for b in balances_announced] == [12_000, 7_000, 2_000, 2_000]
