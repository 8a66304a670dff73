"""Billing's event handlers: decode, lock the account, decide (service.py), book
(repository.py), emit. The runtime's EventProcessor runs each in one transaction with its
inbox row and its outbox rows."""

import json
import logging
import time
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from kiln_billing import repository
from kiln_billing.metrics import (
    CAPTURES,
    DECISION_DELAY,
    DECISION_LATENCY,
    MILLICREDITS,
    REJECTIONS,
    RELEASES,
    RESERVATIONS,
    UNCHANGED,
    mode,
)
from kiln_billing.service import (
    Balances,
    Decision,
    JobCharge,
    apply_postings,
    booked_grant,
    decide_end,
    decide_submission,
    end_of,
    grant_booking,
    job_price,
)
from kiln_contracts import Event
from kiln_contracts.v1 import common_pb2, credits_pb2, jobs_pb2
from kiln_runtime.catalog import Catalog
from kiln_runtime.consuming import Handler
from kiln_runtime.outbox import Outbox

log = logging.getLogger(__name__)

JobEndMessage = jobs_pb2.JobCompleted | jobs_pb2.JobFailed | jobs_pb2.JobCanceled


def _balance_message(b: Balances) -> common_pb2.Balance:
    return common_pb2.Balance(available_millicredits=b.available, reserved_millicredits=b.reserved)


def _catalog_price(catalog: Catalog, spec: common_pb2.JobSpec) -> int | None:
    """The catalog's price of the job now, options included; None for an unknown model."""
    try:
        options = json.loads(spec.input_json) if spec.input_json else {}
    except ValueError:
        options = {}
    try:
        return catalog.price_millicredits(spec.model, options, spec.sandbox)
    except KeyError:
        return None


async def _known_charge(session: AsyncSession, event: Event) -> tuple[bool, JobCharge | None]:
    """(usable, the job's charge). A job id that belongs to another account is not usable."""
    known = await repository.job_charge(session, event.job_id)
    if known is None:
        return True, None
    account_id, charge = known
    if account_id != event.account_id:
        log.error(
            "%s for job %s names account %s, but the job is %s's; ignored",
            event.type,
            event.job_id,
            event.account_id,
            account_id,
        )
        UNCHANGED.labels(event.type, "foreign_account").inc()
        return False, None
    return True, charge


async def _apply(
    session: AsyncSession,
    event: Event,
    balances: Balances,
    decision: Decision,
    *,
    known: bool,
) -> Balances:
    """Write what `decision` says: the booking, the new balances, the job's new state."""
    if decision.charge is None:
        UNCHANGED.labels(event.type, decision.reason).inc()
        return balances
    if decision.booking is not None:
        balances = apply_postings(balances, decision.booking.postings)
        await repository.add_booking(
            session, event.account_id, decision.booking, job_id=event.job_id
        )
        await repository.save_balances(session, event.account_id, balances)
        MILLICREDITS.labels(decision.booking.kind).inc(decision.booking.amount)
    await repository.save_job_charge(
        session, event.job_id, event.account_id, decision.charge, known=known
    )
    if decision.emit is None:
        UNCHANGED.labels(event.type, decision.reason).inc()
        log.warning("%s for job %s: %s", event.type, event.job_id, decision.reason)
    return balances


def make_handlers(catalog: Catalog) -> dict[str, Handler]:
    async def on_credits_granted(session: AsyncSession, event: Event, outbox: Outbox) -> None:
        grant = event.message
        assert isinstance(grant, credits_pb2.CreditsGranted)
        account = event.account_id
        started = time.perf_counter()
        balances = await repository.lock_balances(session, account)
        booking = grant_booking(grant.grant_id, grant.amount_millicredits, balances.available)
        if await repository.booking_exists(session, booking.entry_key):
            UNCHANGED.labels(event.type, "duplicate").inc()
            return  # the same grant under another event id: booked once already
        balances = apply_postings(balances, booking.postings)
        await repository.add_booking(session, account, booking, grant_id=grant.grant_id)
        await repository.save_balances(session, account, balances)
        MILLICREDITS.labels(booking.kind).inc(booking.amount)
        DECISION_LATENCY.labels(event.type).observe(time.perf_counter() - started)
        outbox.emit(
            "credits.applied",
            credits_pb2.CreditsApplied(
                grant_id=grant.grant_id,
                amount_millicredits=booked_grant(booking),
                balance=_balance_message(balances),
            ),
            account_id=account,
        )

    async def on_job_submitted(session: AsyncSession, event: Event, outbox: Outbox) -> None:
        submitted = event.message
        assert isinstance(submitted, jobs_pb2.JobSubmitted)
        spec = submitted.spec
        account, job_id = event.account_id, event.job_id
        started = time.perf_counter()
        balances = await repository.lock_balances(session, account)
        usable, current = await _known_charge(session, event)
        if not usable:
            return
        price = job_price(_catalog_price(catalog, spec), spec.sandbox)
        decision = decide_submission(
            job_id, current, available=balances.available, price=price, sandbox=spec.sandbox
        )
        balances = await _apply(session, event, balances, decision, known=current is not None)
        DECISION_LATENCY.labels(event.type).observe(time.perf_counter() - started)
        job_mode = mode(spec.sandbox)
        if decision.emit in ("reserved", "rejected"):
            submitted_at = event.envelope.occurred_at.ToDatetime(tzinfo=UTC)
            delay = (datetime.now(UTC) - submitted_at).total_seconds()
            DECISION_DELAY.labels(job_mode).observe(max(delay, 0.0))
        if decision.emit == "reserved":
            assert decision.charge is not None
            RESERVATIONS.labels(job_mode).inc()
            outbox.emit(
                "credits.reserved",
                credits_pb2.CreditsReserved(
                    spec=spec,
                    amount_millicredits=decision.charge.amount,
                    balance=_balance_message(balances),
                ),
                account_id=account,
                job_id=job_id,
            )
        elif decision.emit == "rejected":
            REJECTIONS.labels(job_mode).inc()
            outbox.emit(
                "credits.rejected",
                credits_pb2.CreditsRejected(
                    spec=spec,
                    required_millicredits=price or 0,
                    balance=_balance_message(balances),
                ),
                account_id=account,
                job_id=job_id,
            )
        elif decision.emit == "captured":  # the job had completed before its submission
            assert decision.charge is not None
            CAPTURES.labels(job_mode).inc()
            outbox.emit(
                "credits.captured",
                credits_pb2.CreditsCaptured(
                    amount_millicredits=decision.charge.amount, balance=_balance_message(balances)
                ),
                account_id=account,
                job_id=job_id,
            )

    async def on_job_end(session: AsyncSession, event: Event, outbox: Outbox) -> None:
        ended = event.message
        assert isinstance(ended, JobEndMessage)
        account, job_id = event.account_id, event.job_id
        end = end_of(event.type)
        started = time.perf_counter()
        balances = await repository.lock_balances(session, account)
        usable, current = await _known_charge(session, event)
        if not usable:
            return
        decision = decide_end(job_id, current, end, sandbox=ended.spec.sandbox)
        balances = await _apply(session, event, balances, decision, known=current is not None)
        DECISION_LATENCY.labels(event.type).observe(time.perf_counter() - started)
        if decision.charge is None or decision.emit is None:
            return
        amount = decision.charge.amount
        if ended.price_millicredits != amount and not decision.charge.sandbox:
            # The price travels with the reservation: a later price change does not apply.
            log.info(
                "job %s: %s names %d millicredits, the reservation holds %d; %d applies",
                job_id,
                event.type,
                ended.price_millicredits,
                amount,
                amount,
            )
        job_mode = mode(decision.charge.sandbox)
        if decision.emit == "captured":
            CAPTURES.labels(job_mode).inc()
            outbox.emit(
                "credits.captured",
                credits_pb2.CreditsCaptured(
                    amount_millicredits=amount, balance=_balance_message(balances)
                ),
                account_id=account,
                job_id=job_id,
            )
        else:
            RELEASES.labels(job_mode, end).inc()
            outbox.emit(
                "credits.released",
                credits_pb2.CreditsReleased(
                    amount_millicredits=amount, balance=_balance_message(balances), reason=end
                ),
                account_id=account,
                job_id=job_id,
            )

    return {
        "credits.granted": on_credits_granted,
        "job.submitted": on_job_submitted,
        "job.completed": on_job_end,
        "job.failed": on_job_end,
        "job.canceled": on_job_end,
    }
