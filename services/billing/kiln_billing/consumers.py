"""Billing's event handlers: decode, decide (service.py), book (repository.py), emit."""

import logging
import time

from sqlalchemy.ext.asyncio import AsyncSession

from kiln_billing import repository
from kiln_billing.metrics import CREDIT_DECISIONS, DECISION_LATENCY, mode
from kiln_billing.models import Reservation
from kiln_billing.service import (
    Balances,
    Settlement,
    apply_capture,
    apply_grant,
    apply_release,
    apply_reserve,
    decide_reservation,
    settlement_for,
)
from kiln_contracts import Event
from kiln_contracts.v1 import common_pb2, credits_pb2, jobs_pb2
from kiln_runtime.catalog import Catalog
from kiln_runtime.consuming import Handler
from kiln_runtime.messaging import utcnow
from kiln_runtime.outbox import Outbox

log = logging.getLogger(__name__)


def _balance_message(b: Balances) -> common_pb2.Balance:
    return common_pb2.Balance(available_millicredits=b.available, reserved_millicredits=b.reserved)


def make_handlers(catalog: Catalog) -> dict[str, Handler]:
    async def on_credits_granted(session: AsyncSession, event: Event, outbox: Outbox) -> None:
        grant = event.message
        assert isinstance(grant, credits_pb2.CreditsGranted)
        account = event.account_id
        key = f"grant:{grant.grant_id}"
        if await repository.entry_exists(session, account, key):
            return
        balances, booked = apply_grant(
            await repository.balances_for(session, account), grant.amount_millicredits
        )
        repository.add_entry(
            session, account_id=account, entry_key=key, kind="grant", amount=booked
        )
        await repository.save_balances(session, account, balances)
        outbox.emit(
            "credits.applied",
            credits_pb2.CreditsApplied(
                grant_id=grant.grant_id,
                amount_millicredits=booked,
                balance=_balance_message(balances),
            ),
            account_id=account,
        )

    async def on_job_submitted(session: AsyncSession, event: Event, outbox: Outbox) -> None:
        submitted = event.message
        assert isinstance(submitted, jobs_pb2.JobSubmitted)
        spec = submitted.spec
        account, job_id = event.account_id, event.job_id
        if await repository.reservation_for(session, job_id) is not None:
            return  # the same job submitted again under another event id: decided already
        started = time.perf_counter()
        try:
            price = catalog.price_millicredits(spec.model, {}, spec.sandbox)
        except KeyError:
            price = None
        balances = await repository.balances_for(session, account)
        decision = decide_reservation(balances.available, price) if price is not None else None
        DECISION_LATENCY.observe(time.perf_counter() - started)
        if decision is None or not decision.reserve:
            session.add(
                Reservation(
                    job_id=job_id,
                    account_id=account,
                    amount_millicredits=0,
                    sandbox=spec.sandbox,
                    status="rejected",
                    settled_at=utcnow(),
                )
            )
            CREDIT_DECISIONS.labels("rejected", mode(spec.sandbox)).inc()
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
            return
        balances = apply_reserve(balances, decision.amount)
        session.add(
            Reservation(
                job_id=job_id,
                account_id=account,
                amount_millicredits=decision.amount,
                sandbox=spec.sandbox,
                status="reserved",
            )
        )
        repository.add_entry(
            session,
            account_id=account,
            entry_key=f"reserve:{job_id}",
            kind="reserve",
            amount=decision.amount,
            job_id=job_id,
            sandbox=spec.sandbox,
        )
        await repository.save_balances(session, account, balances)
        CREDIT_DECISIONS.labels("reserved", mode(spec.sandbox)).inc()
        outbox.emit(
            "credits.reserved",
            credits_pb2.CreditsReserved(
                spec=spec, amount_millicredits=decision.amount, balance=_balance_message(balances)
            ),
            account_id=account,
            job_id=job_id,
        )

    async def settle(
        session: AsyncSession, event: Event, outbox: Outbox, outcome: Settlement, reason: str
    ) -> None:
        account, job_id = event.account_id, event.job_id
        reservation = await repository.reservation_for(session, job_id)
        if reservation is None:
            # Cannot happen in order (a job runs only after its reservation); keep it visible.
            log.error("%s for job %s without a reservation", event.type, job_id)
            return
        action = settlement_for(reservation.status, outcome)  # type: ignore[arg-type]
        if action is None:
            return
        balances = await repository.balances_for(session, account)
        amount = reservation.amount_millicredits
        if action == "capture":
            balances = apply_capture(balances, amount)
            reservation.status = "captured"
            message: credits_pb2.CreditsCaptured | credits_pb2.CreditsReleased = (
                credits_pb2.CreditsCaptured(
                    amount_millicredits=amount, balance=_balance_message(balances)
                )
            )
            event_type, kind = "credits.captured", "captured"
        else:
            balances = apply_release(balances, amount)
            reservation.status = "released"
            message = credits_pb2.CreditsReleased(
                amount_millicredits=amount, balance=_balance_message(balances), reason=reason
            )
            event_type, kind = "credits.released", "released"
        reservation.settled_at = utcnow()
        repository.add_entry(
            session,
            account_id=account,
            entry_key=f"{action}:{job_id}",
            kind=action,
            amount=amount,
            job_id=job_id,
            sandbox=reservation.sandbox,
        )
        await repository.save_balances(session, account, balances)
        CREDIT_DECISIONS.labels(kind, mode(reservation.sandbox)).inc()
        outbox.emit(event_type, message, account_id=account, job_id=job_id)

    async def on_job_completed(session: AsyncSession, event: Event, outbox: Outbox) -> None:
        await settle(session, event, outbox, "capture", "completed")

    async def on_job_failed(session: AsyncSession, event: Event, outbox: Outbox) -> None:
        await settle(session, event, outbox, "release", "failed")

    async def on_job_canceled(session: AsyncSession, event: Event, outbox: Outbox) -> None:
        await settle(session, event, outbox, "release", "canceled")

    return {
        "credits.granted": on_credits_granted,
        "job.submitted": on_job_submitted,
        "job.completed": on_job_completed,
        "job.failed": on_job_failed,
        "job.canceled": on_job_canceled,
    }
