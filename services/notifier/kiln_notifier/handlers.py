"""The notifier's event handlers. Each runs inside the event runtime's batch transaction (inbox
rows, this change and any outbox rows commit together), so a redelivered event changes nothing
twice.

A job's end becomes one delivery row per target. When the sender has room, the rows are written
already claimed by this process and handed to the sender as soon as the batch commits (no claim
transaction, no poll); otherwise they are written due and the sender claims them when it can.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Protocol

from kiln_contracts import Event
from kiln_contracts.v1 import webhooks_pb2
from kiln_crypto import SealedSecretError, SecretsKeyring
from kiln_notifier import repository
from kiln_notifier.deliveries import (
    TEST_TYPE,
    WEBHOOK_TYPES,
    DeliveryTarget,
    EndpointRecord,
    delivery_targets,
    job_spec,
    payload_for_event,
    payload_for_test_event,
    webhook_type,
)
from kiln_notifier.repository import ClaimedDelivery
from kiln_notifier.tables import NotifierTables
from kiln_runtime.batches import EventHandlers
from kiln_runtime.job_object import FileLinks
from kiln_runtime.unit import Unit

log = logging.getLogger(__name__)


class Sender(Protocol):
    """What the handlers need of the sender (sender.WebhookSender)."""

    def has_room_for(self, url: str) -> bool: ...

    def start(self, claims: list[ClaimedDelivery]) -> None: ...

    def wake(self) -> None: ...


class Notifier:
    def __init__(
        self,
        tables: NotifierTables,
        links: FileLinks,
        *,
        lease: timedelta,
        keyring: SecretsKeyring,
        sender: Sender | None = None,
    ) -> None:
        self.tables = tables
        self.links = links
        self.lease = lease
        self.keyring = keyring
        self.sender = sender
        # The batch's deliveries whose first attempt goes once it commits (see after_batch).
        self._first_attempts: tuple[Unit, list[ClaimedDelivery]] | None = None
        # The live endpoints of the batch's jobs' accounts, read at its start (see before_batch).
        self._endpoints: tuple[Unit, dict[str, list[EndpointRecord]]] | None = None

    def handlers(self) -> EventHandlers:
        handlers = {
            "webhooks.endpoint_changed": self.handle_endpoint_changed,
            "webhook.redelivery_requested": self.handle_redelivery_requested,
            "webhook.test_requested": self.handle_test_requested,
        }
        for event_type in WEBHOOK_TYPES:
            handlers[event_type] = self.handle_job_finished
        return EventHandlers(handlers, before_batch=self.before_batch, after_batch=self.after_batch)

    def before_batch(self, unit: Unit, events: Sequence[Event]) -> None:
        """Read the endpoints of every account with a job's end in the batch at once (one
        query instead of one per event). An endpoint change in the batch drops its account's,
        read again when a later job's end needs them."""
        accounts = [e.account_id for e in events if e.type in WEBHOOK_TYPES]
        self._endpoints = None
        if accounts:
            found = repository.endpoints_of_accounts(unit.connection, self.tables, accounts)
            self._endpoints = (unit, found)

    def _batch_endpoints(self, unit: Unit) -> dict[str, list[EndpointRecord]] | None:
        if self._endpoints is None or self._endpoints[0] is not unit:
            return None
        return self._endpoints[1]

    def _endpoints_of(self, unit: Unit, account_id: str) -> list[EndpointRecord]:
        """The account's live endpoints: as the batch read them, or read now (an endpoint of
        the account changed earlier in the batch, or the handler runs outside a batch)."""
        batch = self._batch_endpoints(unit)
        if batch is None:
            return repository.account_endpoints(unit.connection, self.tables, account_id)
        endpoints = batch.get(account_id)
        if endpoints is None:
            endpoints = repository.account_endpoints(unit.connection, self.tables, account_id)
            batch[account_id] = endpoints
        return endpoints

    def _claim_until(self, unit: Unit) -> Callable[[DeliveryTarget], datetime | None]:
        sender = self.sender
        if sender is None:
            return lambda _target: None
        until = unit.now + self.lease
        return lambda target: until if sender.has_room_for(target.url) else None

    def _send_after_commit(self, unit: Unit, claims: list[ClaimedDelivery]) -> None:
        sender = self.sender
        if sender is None or not claims:
            return
        ready = [c for c in claims if c.claimed]
        waiting = len(claims) - len(ready)
        if ready:
            if self._first_attempts is None or self._first_attempts[0] is not unit:
                self._first_attempts = (unit, [])
            self._first_attempts[1].extend(ready)
        if waiting:
            unit.after_commit(sender.wake)

    def after_batch(self, unit: Unit) -> None:
        """Hand the batch's first attempts to the sender once it commits, each with its signing
        secret read here, after every handler of the batch ran (so an endpoint deleted,
        disabled or given a new secret later in the same batch counts), rather than in a read
        transaction of its own per delivery. A later attempt reads the secret itself."""
        pending, self._first_attempts = self._first_attempts, None
        self._endpoints = None
        sender = self.sender
        if pending is None or pending[0] is not unit or sender is None:
            return
        claims = [
            dataclasses.replace(
                c,
                secret=repository.signing_secret(
                    unit.connection, self.tables, account_id=c.account_id, endpoint_id=c.endpoint_id
                ),
            )
            for c in pending[1]
        ]
        unit.after_commit(lambda: sender.start(claims))

    def sealed_secret(self, message: webhooks_pb2.WebhookEndpointChanged) -> str:
        """The secret of a change, sealed as it came ("" when the change leaves it as it was);
        one sent in clear, by a gateway of the release before sealed secrets, is sealed here."""
        if message.sealed_secret:
            return message.sealed_secret
        if message.secret:
            return self.keyring.seal(message.secret)
        return ""

    def reseal(self, unit: Unit, endpoint_id: str, sealed: str) -> None:
        """A stored secret sealed with an older key, sealed again with the first one, so that
        nothing consumed after `secrets_rotation` ran still needs the older key.

        One that no key opens stays as it came, and its deliveries wait (and say why) until a
        listed key opens it: the event is not poison, the keyring is misconfigured (a rotation
        half-rolled). Called only for a change that was stored, so a change that is ignored
        (an old revision) is never judged by its secret."""
        if not sealed or self.keyring.sealed_with_first_key(sealed):
            return
        try:
            resealed = self.keyring.reseal(sealed)
        except SealedSecretError:
            log.error(
                "endpoint %s: no key of KILN_SECRETS_KEYS opens its secret; kept as it came",
                endpoint_id,
            )
            return
        repository.set_sealed_secret(unit.connection, self.tables, endpoint_id, resealed)

    def handle_endpoint_changed(self, unit: Unit, event: Event) -> None:
        message = event.message
        if not isinstance(message, webhooks_pb2.WebhookEndpointChanged):
            raise TypeError(f"expected WebhookEndpointChanged, got {type(message).__name__}")
        batch = self._batch_endpoints(unit)
        if batch is not None:
            batch.pop(event.account_id, None)  # read again by a later job's end
        sealed = self.sealed_secret(message)
        stored = repository.upsert_endpoint(
            unit.connection,
            self.tables,
            repository.EndpointChange(
                endpoint_id=message.endpoint_id,
                account_id=event.account_id,
                url=message.url,
                sealed_secret=sealed,
                event_types=list(message.event_types),
                is_default=message.is_default,
                deleted=message.deleted,
                changed_at=event.envelope.occurred_at.ToDatetime(tzinfo=UTC),
                disabled=message.disabled,
                revision=message.revision,
            ),
        )
        if not stored:
            log.warning(
                "endpoint %s: change ignored (revision %d), this one or a later one is stored "
                "(event %s)",
                message.endpoint_id,
                message.revision,
                event.event_id,
            )
            return
        self.reseal(unit, message.endpoint_id, sealed)

    def handle_job_finished(self, unit: Unit, event: Event) -> None:
        """job.completed / job.failed / job.canceled / credits.rejected: one delivery per
        target (the job's webhook_url, the matching account endpoints)."""
        kind = webhook_type(event.type)
        spec = job_spec(event)
        endpoints = self._endpoints_of(unit, event.account_id)
        targets = delivery_targets(kind, spec.webhook_url, endpoints)
        if not targets:
            return
        claims = repository.add_deliveries(
            unit.connection,
            self.tables,
            webhook_id=event.event_id,
            account_id=event.account_id,
            job_id=event.job_id,
            event_type=kind,
            payload=payload_for_event(event, self.links, now=unit.now),
            targets=targets,
            trace_id=event.envelope.trace_id,
            now=unit.now,
            claim_until=self._claim_until(unit),
        )
        self._send_after_commit(unit, claims)

    def handle_redelivery_requested(self, unit: Unit, event: Event) -> None:
        """Send a delivery again with the same body and `webhook-id` (the gateway checked that
        the account owns it; so do we). Unknown ids change nothing."""
        message = event.message
        if not isinstance(message, webhooks_pb2.WebhookRedeliveryRequested):
            raise TypeError(f"expected WebhookRedeliveryRequested, got {type(message).__name__}")
        redelivery = repository.request_redelivery(
            unit.connection,
            self.tables,
            account_id=event.account_id,
            delivery_id=message.delivery_id,
            now=unit.now,
        )
        if redelivery is not None:
            log.info("delivery %s: redelivery requested", redelivery.delivery_id)
            if self.sender is not None:
                unit.after_commit(self.sender.wake)

    def handle_test_requested(self, unit: Unit, event: Event) -> None:
        """A `webhook.test` delivery to one live endpoint of the account, `webhook-id` = test
        id."""
        message = event.message
        if not isinstance(message, webhooks_pb2.WebhookTestRequested):
            raise TypeError(f"expected WebhookTestRequested, got {type(message).__name__}")
        url = repository.endpoint_for_test(
            unit.connection,
            self.tables,
            account_id=event.account_id,
            endpoint_id=message.endpoint_id,
        )
        if not url:
            log.info("test event for unknown endpoint %s: nothing sent", message.endpoint_id)
            return
        claims = repository.add_deliveries(
            unit.connection,
            self.tables,
            webhook_id=message.test_id or event.event_id,
            account_id=event.account_id,
            job_id="",
            event_type=TEST_TYPE,
            payload=payload_for_test_event(message.endpoint_id, message.test_id, unit.now),
            targets=[DeliveryTarget(endpoint_id=message.endpoint_id, url=url)],
            trace_id=event.envelope.trace_id,
            now=unit.now,
            claim_until=self._claim_until(unit),
        )
        self._send_after_commit(unit, claims)
