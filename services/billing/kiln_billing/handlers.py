"""Billing's event handlers: read what billing knows of the account and the job, decide
(ledger.py, pure), book (repository.py), emit. The event runtime runs a whole polled batch in
one transaction; `before_batch` loads the batch's balances and job charges in two queries and
the handlers keep them current as they book."""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Sequence
from datetime import UTC
from typing import Any

from kiln_billing import repository
from kiln_billing.ledger import (
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
from kiln_contracts import Event
from kiln_contracts.v1 import common_pb2, credits_pb2, jobs_pb2
from kiln_runtime.batches import EventHandlers
from kiln_runtime.catalog import Catalog
from kiln_runtime.unit import Unit

log = logging.getLogger(__name__)

JobEndMessage = jobs_pb2.JobCompleted | jobs_pb2.JobFailed | jobs_pb2.JobCanceled
UNKNOWN = object()


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


def _count(unit: Unit, counter: Any, amount: float = 1) -> None:
    """Counted once the batch commits: a batch handled again after a transient failure (its
    first run rolled back) counts once."""
    unit.after_commit(functools.partial(counter.inc, amount))


def _observe(unit: Unit, histogram: Any, value: float) -> None:
    unit.after_commit(functools.partial(histogram.observe, value))


class Billing:
    """The handlers, with what one batch has read and booked so far."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._unit: Unit | None = None
        self._balances: dict[str, tuple[Balances, int]] = {}  # with their version
        self._charges: dict[str, tuple[str, JobCharge] | None] = {}

    def handlers(self) -> EventHandlers:
        return EventHandlers(
            {
                "credits.granted": self.handle_credits_granted,
                "job.submitted": self.handle_job_submitted,
                "job.completed": self.handle_job_end,
                "job.failed": self.handle_job_end,
                "job.canceled": self.handle_job_end,
            },
            before_batch=self.before_batch,
        )

    # --- what the batch knows -----------------------------------------------------------------

    def _fresh(self, unit: Unit) -> None:
        if self._unit is not unit:  # a new transaction: forget the last one's reads
            self._unit = unit
            self._balances = {}
            self._charges = {}

    def before_batch(self, unit: Unit, events: Sequence[Event]) -> None:
        self._fresh(unit)
        self._balances.update(
            repository.lock_balances(unit.connection, {e.account_id for e in events})
        )
        job_ids = {e.job_id for e in events if e.job_id}
        known = repository.job_charges(unit.connection, job_ids)
        for job_id in job_ids:
            self._charges[job_id] = known.get(job_id)

    def _balance(self, unit: Unit, account_id: str) -> Balances:
        self._fresh(unit)
        if account_id not in self._balances:
            self._balances.update(repository.lock_balances(unit.connection, [account_id]))
        return self._balances[account_id][0]

    def _save_balance(self, unit: Unit, account_id: str, balances: Balances) -> None:
        version = repository.save_balances(unit.connection, account_id, balances)
        self._balances[account_id] = (balances, version)

    def _announced(self, account_id: str, balances: Balances) -> common_pb2.Balance:
        """The balance message of an event: the balances and the version they were saved as."""
        return common_pb2.Balance(
            available_millicredits=balances.available,
            reserved_millicredits=balances.reserved,
            version=self._balances[account_id][1],
        )

    def _known_charge(self, unit: Unit, event: Event) -> tuple[bool, JobCharge | None]:
        """(usable, the job's charge). A job id that belongs to another account is not usable."""
        self._fresh(unit)
        if event.job_id not in self._charges:
            found = repository.job_charges(unit.connection, [event.job_id])
            self._charges[event.job_id] = found.get(event.job_id)
        known = self._charges[event.job_id]
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
            _count(unit, UNCHANGED.labels(event.type, "foreign_account"))
            return False, None
        return True, charge

    def _apply(
        self, unit: Unit, event: Event, balances: Balances, decision: Decision, *, known: bool
    ) -> Balances:
        """Write what `decision` says: the booking, the new balances, the job's new state."""
        if decision.charge is None:
            _count(unit, UNCHANGED.labels(event.type, decision.reason))
            return balances
        if decision.booking is not None:
            balances = apply_postings(balances, decision.booking.postings)
            repository.add_booking(
                unit.connection,
                event.account_id,
                decision.booking,
                now=unit.now,
                job_id=event.job_id,
            )
            self._save_balance(unit, event.account_id, balances)
            _count(unit, MILLICREDITS.labels(decision.booking.kind), decision.booking.amount)
        repository.save_job_charge(
            unit.connection,
            event.job_id,
            event.account_id,
            decision.charge,
            known=known,
            now=unit.now,
        )
        self._charges[event.job_id] = (event.account_id, decision.charge)
        if decision.emit is None:
            _count(unit, UNCHANGED.labels(event.type, decision.reason))
            log.warning("%s for job %s: %s", event.type, event.job_id, decision.reason)
        return balances

    # --- the handlers -------------------------------------------------------------------------

    def handle_credits_granted(self, unit: Unit, event: Event) -> None:
        grant = event.message
        assert isinstance(grant, credits_pb2.CreditsGranted)
        account = event.account_id
        started = time.perf_counter()
        balances = self._balance(unit, account)
        booking = grant_booking(grant.grant_id, grant.amount_millicredits, balances.available)
        if repository.booking_exists(unit.connection, booking.entry_key):
            _count(unit, UNCHANGED.labels(event.type, "duplicate"))
            return  # the same grant under another event id: booked once already
        balances = apply_postings(balances, booking.postings)
        repository.add_booking(
            unit.connection, account, booking, now=unit.now, grant_id=grant.grant_id
        )
        self._save_balance(unit, account, balances)
        _count(unit, MILLICREDITS.labels(booking.kind), booking.amount)
        _observe(unit, DECISION_LATENCY.labels(event.type), time.perf_counter() - started)
        unit.emit(
            "credits.applied",
            credits_pb2.CreditsApplied(
                grant_id=grant.grant_id,
                amount_millicredits=booked_grant(booking),
                balance=self._announced(account, balances),
            ),
            account_id=account,
        )

    def handle_job_submitted(self, unit: Unit, event: Event) -> None:
        submitted = event.message
        assert isinstance(submitted, jobs_pb2.JobSubmitted)
        spec = submitted.spec
        account, job_id = event.account_id, event.job_id
        started = time.perf_counter()
        balances = self._balance(unit, account)
        usable, current = self._known_charge(unit, event)
        if not usable:
            return
        price = job_price(_catalog_price(self.catalog, spec), spec.sandbox)
        decision = decide_submission(
            job_id, current, available=balances.available, price=price, sandbox=spec.sandbox
        )
        balances = self._apply(unit, event, balances, decision, known=current is not None)
        _observe(unit, DECISION_LATENCY.labels(event.type), time.perf_counter() - started)
        job_mode = mode(spec.sandbox)
        if decision.emit in ("reserved", "rejected"):
            submitted_at = event.envelope.occurred_at.ToDatetime(tzinfo=UTC)
            delay = (unit.now - submitted_at).total_seconds()
            _observe(unit, DECISION_DELAY.labels(job_mode), max(delay, 0.0))
        if decision.emit == "reserved":
            assert decision.charge is not None
            _count(unit, RESERVATIONS.labels(job_mode))
            unit.emit(
                "credits.reserved",
                credits_pb2.CreditsReserved(
                    spec=spec,
                    amount_millicredits=decision.charge.amount,
                    balance=self._announced(account, balances),
                ),
                account_id=account,
                job_id=job_id,
            )
        elif decision.emit == "rejected":
            _count(unit, REJECTIONS.labels(job_mode))
            unit.emit(
                "credits.rejected",
                credits_pb2.CreditsRejected(
                    spec=spec,
                    required_millicredits=price or 0,
                    balance=self._announced(account, balances),
                ),
                account_id=account,
                job_id=job_id,
            )
        elif decision.emit == "captured":  # the job had completed before its submission
            assert decision.charge is not None
            _count(unit, CAPTURES.labels(job_mode))
            unit.emit(
                "credits.captured",
                credits_pb2.CreditsCaptured(
                    amount_millicredits=decision.charge.amount,
                    balance=self._announced(account, balances),
                ),
                account_id=account,
                job_id=job_id,
            )

    def handle_job_end(self, unit: Unit, event: Event) -> None:
        ended = event.message
        assert isinstance(ended, JobEndMessage)
        account, job_id = event.account_id, event.job_id
        end = end_of(event.type)
        started = time.perf_counter()
        balances = self._balance(unit, account)
        usable, current = self._known_charge(unit, event)
        if not usable:
            return
        decision = decide_end(job_id, current, end, sandbox=ended.spec.sandbox)
        balances = self._apply(unit, event, balances, decision, known=current is not None)
        _observe(unit, DECISION_LATENCY.labels(event.type), time.perf_counter() - started)
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
            _count(unit, CAPTURES.labels(job_mode))
            unit.emit(
                "credits.captured",
                credits_pb2.CreditsCaptured(
                    amount_millicredits=amount, balance=self._announced(account, balances)
                ),
                account_id=account,
                job_id=job_id,
            )
        else:
            _count(unit, RELEASES.labels(job_mode, end))
            unit.emit(
                "credits.released",
                credits_pb2.CreditsReleased(
                    amount_millicredits=amount,
                    balance=self._announced(account, balances),
                    reason=end,
                ),
                account_id=account,
                job_id=job_id,
            )


def make_handlers(catalog: Catalog) -> EventHandlers:
    return Billing(catalog).handlers()
