"""The sender: makes one signed attempt per claimed delivery and records the outcome with the
event it announces.

One attempt:
1. the row is claimed (a lease, so another instance does not send it too): by the handler that
   wrote it, when the sender had room, else by `claim_due` here;
2. find the secret (the endpoint's, or the account's default for a job's webhook_url) and open
   it (it is stored sealed with the operator's keyring, kiln_crypto.sealed_secrets);
3. check the URL and resolve it (url_guard, with a short cache); connect to a checked address
   only, through a client of its own per (host, address): connections are kept alive and
   reused for that pinned endpoint alone, never for another host name;
4. POST the stored body, signed per Standard Webhooks, without following redirects;
5. record it (the runtime's group commit: many attempts share a transaction): the attempt row,
   the delivery's new state, and `webhook.attempted` while retries remain, or the final
   `webhook.delivered` / `webhook.failed` carrying the attempt.
"""

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from standardwebhooks.webhooks import EmptyWebhookSecretError, Webhook

from kiln_contracts.v1 import webhooks_pb2
from kiln_crypto import SealedSecretError, SecretsKeyring
from kiln_notifier import repository
from kiln_notifier.config import NotifierSettings
from kiln_notifier.deliveries import AttemptOutcome, decide_after_attempt, parse_retry_after
from kiln_notifier.metrics import (
    WEBHOOK_ATTEMPTS,
    WEBHOOK_DELIVERIES,
    WEBHOOK_DELIVERY_SECONDS,
    WEBHOOK_DISABLED_ENDPOINTS,
    WEBHOOK_LATENCY,
    WEBHOOK_PENDING_RETRIES,
)
from kiln_notifier.pinned_http import PinnedClients, Poster, SendError
from kiln_notifier.repository import ClaimedDelivery
from kiln_notifier.signing import load_signing_key, sign_v1a
from kiln_notifier.tables import DELIVERED, FAILED, PENDING, NotifierTables
from kiln_runtime.service import Transactions
from kiln_runtime.unit import Unit
from kiln_runtime.url_guard import (
    CachingResolver,
    Resolver,
    UnsafeUrl,
    check_url_shape,
    resolve_public_addresses,
)

log = logging.getLogger(__name__)

USER_AGENT = "Kiln-Webhooks/1"

Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------------------------------------
# Signing


class InvalidSecret(ValueError):
    pass


def signature_headers(
    *,
    webhook_id: str,
    timestamp: datetime,
    body: str,
    secret: str,
    signing_key: Ed25519PrivateKey | None = None,
) -> dict[str, str]:
    """`webhook-id`, `webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256>` over
    `{id}.{timestamp}.{body}` with the `whsec_` secret (Standard Webhooks); with the platform's
    Ed25519 key also `v1a,<base64 signature>` of the same content, space-separated.
    """
    try:
        signer = Webhook(secret)
    except (ValueError, EmptyWebhookSecretError) as exc:  # not base64, or empty
        raise InvalidSecret("the signing secret is not a valid whsec_ secret") from exc
    # The library drops the tzinfo instead of converting, so hand it UTC.
    stamp = timestamp.astimezone(UTC)
    signatures = [signer.sign(webhook_id, stamp, body)]
    if signing_key is not None:
        signatures.append(
            sign_v1a(
                signing_key, webhook_id=webhook_id, timestamp=int(stamp.timestamp()), body=body
            )
        )
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(stamp.timestamp())),
        "webhook-signature": " ".join(signatures),
    }


# ---------------------------------------------------------------------------------------------
# One HTTP attempt


@dataclass(frozen=True)
class AttemptResult:
    status_code: int | None
    latency_ms: int
    error: str | None
    permanent: bool = False  # retrying cannot help (bad URL shape, endpoint deleted, bad secret)
    retry_after: str | None = None  # a 429's Retry-After header, as sent


async def attempt_delivery(
    clients: Poster,
    claim: ClaimedDelivery,
    secret: str,
    *,
    allow_loopback: bool,
    timeout_s: float,
    now: datetime,
    signing_key: Ed25519PrivateKey | None = None,
    resolver: Resolver | None = None,
) -> AttemptResult:
    """One signed POST. The host is resolved once, every address checked, and the connection
    made to the first checked address only (DNS that changes after the check changes nothing);
    https is verified against the URL's host name; redirects are answers, never followed."""
    try:
        check_url_shape(claim.url, allow_loopback=allow_loopback)
    except UnsafeUrl as exc:
        return AttemptResult(None, 0, str(exc), permanent=True)
    try:
        headers = signature_headers(
            webhook_id=claim.webhook_id,
            timestamp=now,
            body=claim.payload,
            secret=secret,
            signing_key=signing_key,
        )
    except InvalidSecret as exc:
        return AttemptResult(None, 0, str(exc), permanent=True)
    headers["content-type"] = "application/json"
    headers["user-agent"] = USER_AGENT
    started = time.perf_counter()

    def elapsed_ms() -> int:
        return int((time.perf_counter() - started) * 1000)

    try:
        async with asyncio.timeout(timeout_s):
            # Resolved at send time, every attempt: a name that now points inside is refused.
            _target, addresses = await resolve_public_addresses(
                claim.url, allow_loopback=allow_loopback, resolver=resolver
            )
            sent = time.perf_counter()
            answer = await clients.post(
                claim.url, addresses[0], claim.payload.encode("utf-8"), headers, timeout_s
            )
            WEBHOOK_LATENCY.observe(time.perf_counter() - sent)
    except UnsafeUrl as exc:
        return AttemptResult(None, elapsed_ms(), str(exc))
    except TimeoutError:
        return AttemptResult(None, elapsed_ms(), f"no response within {timeout_s:g} s")
    except SendError as exc:
        return AttemptResult(None, elapsed_ms(), exc.reason)
    status = answer.status
    error = None if 200 <= status < 300 else f"HTTP {status}"
    if 300 <= status < 400:
        error = f"HTTP {status} (redirects are not followed)"
    retry_after = answer.retry_after if status == 429 else None
    return AttemptResult(status, elapsed_ms(), error, retry_after=retry_after)


# ---------------------------------------------------------------------------------------------
# The sender loop

_OUTCOME_NAMES = {
    AttemptOutcome.DELIVERED: "delivered",
    AttemptOutcome.RETRY: "retrying",
    AttemptOutcome.GIVE_UP: "failed",
}


class WebhookSender:
    def __init__(
        self,
        settings: NotifierSettings,
        tables: NotifierTables,
        runtime: Transactions,
        *,
        keyring: SecretsKeyring,
        clients: Poster | None = None,
        clock: Clock | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self._settings = settings
        self._tables = tables
        self._runtime = runtime
        self._keyring = keyring
        self._clients = clients or PinnedClients(
            per_endpoint=settings.max_concurrent_per_endpoint, keepalive_s=settings.keepalive_s
        )
        self._clock = clock or runtime.clock
        self._resolver = resolver or CachingResolver()
        self._signing_key = (
            load_signing_key(settings.webhook_signing_key) if settings.webhook_signing_key else None
        )
        self._in_flight: set[asyncio.Task[None]] = set()
        self._in_flight_by_url: dict[str, int] = {}
        # Set by `wake` (deliveries wait in the database) and, while some may still wait there,
        # when a slot frees up. Deliveries the handlers claimed are started directly and need no
        # look at the database: a finished attempt alone does not make the loop query it.
        self._wakeup = asyncio.Event()
        self._backlog = True  # due deliveries may wait in the database (true at start)
        self._wakes = 0
        self._gauges_at = 0.0

    async def run(self) -> None:
        """Until cancelled: keep up to max_concurrent_deliveries attempts in flight."""
        try:
            while True:
                # Cleared before counting, so a slot freed (or a delivery recorded) from here on
                # wakes the wait below.
                self._wakeup.clear()
                wakes = self._wakes
                free = self._settings.max_concurrent_deliveries - len(self._in_flight)
                claimed = 0
                if free > 0:
                    try:
                        counted = dict(self._in_flight_by_url)  # what the claim goes by
                        claims = await self.claim_due(free)
                        self.start(claims)
                        claimed = len(claims)
                        if self._capped(counted, claims):
                            # An endpoint at its limit may have kept due deliveries back: a
                            # slot freed looks again, rather than the next poll.
                            self._backlog = True
                        elif claimed < free and wakes == self._wakes:
                            self._backlog = False  # everything due was taken
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        log.exception("claiming due deliveries failed; retrying")
                else:
                    self._backlog = True
                await self._refresh_gauges()
                if claimed and claimed == free:
                    self._backlog = True
                    continue  # there may be more due right now
                # Not asyncio.wait_for: on Python 3.11 it drops a cancellation that comes just
                # as the awaited event is set, and this loop would then never end (a shutdown,
                # or a test's `task.cancel()`, waited forever). asyncio.timeout keeps it.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._settings.delivery_poll_interval_s):
                        await self._wakeup.wait()
        finally:
            await self.close()

    def wake(self) -> None:
        """Look for due deliveries now (a redelivery was asked for, or the handlers left
        deliveries for the poll because the sender was full)."""
        self._wakes += 1
        self._backlog = True
        self._wakeup.set()

    def _capped(self, counted: dict[str, int], claims: list[ClaimedDelivery]) -> bool:
        """Whether a claim counting `counted` in flight per URL reached an endpoint's limit."""
        for claim in claims:
            counted[claim.url] = counted.get(claim.url, 0) + 1
        limit = self._settings.max_concurrent_per_endpoint
        return any(count >= limit for count in counted.values())

    def has_room_for(self, url: str) -> bool:
        """Whether a new delivery to `url` may start at once (read from the consumer's thread:
        a hint; the counts move on the event loop)."""
        return (
            len(self._in_flight) < self._settings.max_concurrent_deliveries
            and self._in_flight_by_url.get(url, 0) < self._settings.max_concurrent_per_endpoint
        )

    async def _refresh_gauges(self) -> None:
        now = time.monotonic()
        if now - self._gauges_at < self._settings.metrics_refresh_s:
            return
        self._gauges_at = now
        tables = self._tables
        try:
            pending, disabled = await self._runtime.read(
                lambda c: (
                    repository.pending_retries(c, tables),
                    repository.disabled_endpoint_count(c, tables),
                )
            )
            WEBHOOK_PENDING_RETRIES.set(pending)
            WEBHOOK_DISABLED_ENDPOINTS.set(disabled)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("refreshing the webhook gauges failed")

    async def close(self) -> None:
        for task in list(self._in_flight):
            task.cancel()
        await asyncio.gather(*self._in_flight, return_exceptions=True)
        await self._clients.aclose()

    def start(self, claims: list[ClaimedDelivery]) -> None:
        for claim in claims:
            self._in_flight_by_url[claim.url] = self._in_flight_by_url.get(claim.url, 0) + 1
            task = asyncio.create_task(self._deliver_logged(claim), name=f"webhook-{claim.id}")
            self._in_flight.add(task)
            task.add_done_callback(functools.partial(self._finished, url=claim.url))

    def _finished(self, task: asyncio.Task[None], *, url: str) -> None:
        self._in_flight.discard(task)
        left = self._in_flight_by_url.get(url, 0) - 1
        if left > 0:
            self._in_flight_by_url[url] = left
        else:
            self._in_flight_by_url.pop(url, None)
        if self._backlog:
            self._wakeup.set()

    async def _deliver_logged(self, claim: ClaimedDelivery) -> None:
        try:
            await self.deliver(claim)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The lease runs out and the delivery is tried again.
            log.exception("delivery %s: attempt %d not recorded", claim.id, claim.attempt)

    async def claim_due(self, limit: int) -> list[ClaimedDelivery]:
        now = self._clock()
        lease = timedelta(seconds=self._settings.delivery_lease_s)
        in_flight = dict(self._in_flight_by_url)
        tables = self._tables
        return await self._runtime.db.write(
            lambda c: repository.claim_due_deliveries(
                c,
                tables,
                now=now,
                lease=lease,
                limit=limit,
                in_flight_by_url=in_flight,
                max_per_url=self._settings.max_concurrent_per_endpoint,
            )
        )

    async def deliver(self, claim: ClaimedDelivery) -> AttemptOutcome | None:
        """One attempt of a claimed delivery, recorded. None if someone else recorded it."""
        tables = self._tables
        lookup = claim.secret
        if lookup is None:
            lookup = await self._runtime.read(
                lambda c: repository.signing_secret(
                    c, tables, account_id=claim.account_id, endpoint_id=claim.endpoint_id
                )
            )
        attempted_at = self._clock()
        if lookup.disabled:
            # After a 410 Gone, or by the account (the console's "Disable").
            result = AttemptResult(None, 0, "the endpoint is disabled", permanent=True)
        elif lookup.endpoint_gone:
            result = AttemptResult(None, 0, "the endpoint was deleted", permanent=True)
        elif not lookup.found:
            # The account's default secret has not reached us yet: retry on the schedule.
            result = AttemptResult(None, 0, "no signing secret for this account yet")
        elif (secret := self.open_secret(claim, lookup)) is None:
            # The operator's to fix (a key missing from KILN_SECRETS_KEYS): retry meanwhile.
            result = AttemptResult(None, 0, "the signing secret cannot be read right now")
        else:
            result = await attempt_delivery(
                self._clients,
                claim,
                secret,
                allow_loopback=self._settings.allow_loopback_urls,
                timeout_s=self._settings.delivery_timeout_s,
                now=attempted_at,
                signing_key=self._signing_key,
                resolver=self._resolver,
            )
        return await self.record(claim, attempted_at, result)

    def open_secret(self, claim: ClaimedDelivery, lookup: repository.SecretLookup) -> str | None:
        """The secret in clear, None when no key of the keyring opens it."""
        if not lookup.sealed_secret:
            return lookup.clear_secret
        try:
            return self._keyring.open(lookup.sealed_secret)
        except SealedSecretError:
            log.error(
                "delivery %s: no key of KILN_SECRETS_KEYS opens the secret of endpoint %s",
                claim.id,
                claim.endpoint_id or f"default_{claim.account_id}",
            )
            return None

    async def record(
        self, claim: ClaimedDelivery, attempted_at: datetime, result: AttemptResult
    ) -> AttemptOutcome | None:
        outcome = await self._runtime.write(
            lambda unit: record_attempt(
                unit, self._tables, self._settings, claim, attempted_at, result
            )
        )
        if outcome is None:
            log.warning("delivery %s attempt %d was recorded elsewhere", claim.id, claim.attempt)
            return None
        WEBHOOK_ATTEMPTS.labels(outcome.value).inc()
        if outcome is not AttemptOutcome.RETRY:
            WEBHOOK_DELIVERIES.labels(_OUTCOME_NAMES[outcome]).inc()
        if outcome is AttemptOutcome.DELIVERED:
            WEBHOOK_DELIVERY_SECONDS.observe(
                max((attempted_at - claim.created_at).total_seconds(), 0.0)
                if claim.created_at is not None
                else 0.0
            )
        log.debug(
            "delivery %s attempt %d to %s: %s (%s)",
            claim.id,
            claim.attempt,
            claim.endpoint_id or "webhook_url",
            outcome.value,
            result.error or result.status_code,
        )
        return outcome


def record_attempt(
    unit: Unit,
    tables: NotifierTables,
    settings: NotifierSettings,
    claim: ClaimedDelivery,
    attempted_at: datetime,
    result: AttemptResult,
) -> AttemptOutcome | None:
    """In one transaction: the attempt row, the delivery's new state, and the event that tells
    it: `webhook.attempted` when a retry follows, else `webhook.delivered` or `webhook.failed`
    carrying the attempt. None when someone else recorded this attempt already."""
    now = unit.now
    decision = decide_after_attempt(
        claim.schedule_attempt,
        result.status_code,
        settings.retry_schedule_s,
        now,
        permanent=result.permanent,
        retry_after_s=parse_retry_after(result.retry_after, now),
        max_retry_after_s=settings.max_retry_after_s,
    )
    new_status = {
        AttemptOutcome.DELIVERED: DELIVERED,
        AttemptOutcome.RETRY: PENDING,
        AttemptOutcome.GIVE_UP: FAILED,
    }[decision.outcome]
    recorded = repository.record_attempt(
        unit.connection,
        tables,
        claim,
        attempted_at=attempted_at,
        status_code=result.status_code,
        latency_ms=result.latency_ms,
        error=result.error,
        new_status=new_status,
        next_attempt_at=decision.next_attempt_at,
    )
    if not recorded:
        return None
    if decision.disable_endpoint:
        repository.disable_endpoint(
            unit.connection,
            tables,
            endpoint_id=claim.endpoint_id,
            account_id=claim.account_id,
            reason="HTTP 410 Gone",
            now=now,
        )
    trace = claim.trace_id
    if decision.outcome is AttemptOutcome.RETRY:
        attempted = webhooks_pb2.WebhookAttempted(
            delivery_id=claim.id,
            webhook_id=claim.webhook_id,
            endpoint_id=claim.endpoint_id,
            url=claim.url,
            event_type=claim.event_type,
            job_id=claim.job_id,
            attempt=claim.attempt,
            status_code=result.status_code or 0,
            latency_ms=result.latency_ms,
            error=result.error or "",
            outcome=_OUTCOME_NAMES[decision.outcome],
        )
        attempted.attempted_at.FromDatetime(attempted_at)
        if decision.next_attempt_at is not None:
            attempted.next_attempt_at.FromDatetime(decision.next_attempt_at)
        unit.emit(
            "webhook.attempted",
            attempted,
            account_id=claim.account_id,
            job_id=claim.job_id,
            trace_id=trace,
        )
        return decision.outcome
    final = webhooks_pb2.DeliveryAttempt(
        job_id=claim.job_id,
        status_code=result.status_code or 0,
        latency_ms=result.latency_ms,
        error=result.error or "",
    )
    final.attempted_at.FromDatetime(attempted_at)
    if decision.outcome is AttemptOutcome.DELIVERED:
        unit.emit(
            "webhook.delivered",
            webhooks_pb2.WebhookDelivered(
                delivery_id=claim.id,
                webhook_id=claim.webhook_id,
                endpoint_id=claim.endpoint_id,
                url=claim.url,
                event_type=claim.event_type,
                attempt=claim.attempt,
                status_code=result.status_code or 0,
                latency_ms=result.latency_ms,
                final_attempt=final,
            ),
            account_id=claim.account_id,
            job_id=claim.job_id,
            trace_id=trace,
        )
    else:
        unit.emit(
            "webhook.failed",
            webhooks_pb2.WebhookFailed(
                delivery_id=claim.id,
                webhook_id=claim.webhook_id,
                endpoint_id=claim.endpoint_id,
                url=claim.url,
                event_type=claim.event_type,
                attempts=claim.attempt,
                last_error=result.error or "",
                last_status_code=result.status_code or 0,
                final_attempt=final,
            ),
            account_id=claim.account_id,
            job_id=claim.job_id,
            trace_id=trace,
        )
    return decision.outcome
