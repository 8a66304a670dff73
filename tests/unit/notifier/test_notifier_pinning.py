"""The URL guard at connect time: one resolution, every address checked, the connection made to
the checked address with the original host name for Host and TLS, no redirects; DNS that
changes between the check and the connection changes nothing. Also: `v1a` signatures, 410 and
429 decisions, Retry-After parsing."""

import base64
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from standardwebhooks import Webhook

from kiln_notifier.deliveries import AttemptOutcome, decide_after_attempt, parse_retry_after
from kiln_notifier.pinned_http import Answer
from kiln_notifier.repository import ClaimedDelivery
from kiln_notifier.sender import attempt_delivery, signature_headers
from kiln_notifier.signing import load_signing_key

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
SECRET = "whsec_" + base64.b64encode(b"\x01" * 32).decode()
PUBLIC = "93.184.216.34"


def claim(url: str) -> ClaimedDelivery:
    return ClaimedDelivery(
        id="dlv_1",
        webhook_id="evt_1",
        account_id="acct_1",
        job_id="job_1",
        endpoint_id="",
        url=url,
        event_type="job.completed",
        payload='{"type":"job.completed"}',
        attempts=0,
        trace_id="",
    )


class Rebinding:
    """A resolver whose answer changes after the first lookup (DNS rebinding)."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.calls = 0

    async def __call__(self, host: str, port: int) -> list[str]:
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        return answer


@dataclass
class Sent:
    url: str
    address: str
    headers: dict[str, str]


@dataclass
class RecordingPoster:
    """Answers every POST with `status` and records what would have been sent where."""

    status: int = 204
    retry_after: str | None = None
    seen: list[Sent] = field(default_factory=list)

    async def post(
        self, url: str, address: str, body: bytes, headers: dict[str, str], timeout_s: float
    ) -> Answer:
        self.seen.append(Sent(url, address, headers))
        return Answer(self.status, self.retry_after)

    async def aclose(self) -> None:
        return None


def recording_client(
    status: int = 204, headers: dict[str, str] | None = None
) -> tuple[RecordingPoster, list[Sent]]:
    poster = RecordingPoster(status, (headers or {}).get("retry-after"))
    return poster, poster.seen


async def test_the_checked_address_is_pinned_even_if_dns_changes() -> None:
    resolver = Rebinding([PUBLIC], ["127.0.0.1"])
    client, seen = recording_client()
    result = await attempt_delivery(
        client,
        claim("https://hooks.example.com/kiln"),
        SECRET,
        allow_loopback=False,
        timeout_s=5,
        now=NOW,
        resolver=resolver,
    )
    assert result.status_code == 204
    assert resolver.calls == 1  # resolved once; the connection does not look the name up again
    [request] = seen
    assert request.address == PUBLIC  # connect to what was checked
    # The request itself names the host (Host header, TLS server name and certificate check:
    # the real connection's part is tests/integration/notifier/test_notifier_tls_pinning.py).
    assert request.url == "https://hooks.example.com/kiln"
    assert request.headers["webhook-id"] == "evt_1"


async def test_a_name_that_now_resolves_inside_is_refused_before_connecting() -> None:
    client, seen = recording_client()
    for inside in (["10.0.0.7"], ["169.254.169.254"], ["100.64.1.1"], ["::ffff:127.0.0.1"]):
        result = await attempt_delivery(
            client,
            claim("https://hooks.example.com/kiln"),
            SECRET,
            allow_loopback=False,
            timeout_s=5,
            now=NOW,
            resolver=Rebinding([PUBLIC, *inside]),  # a mixed answer is refused as a whole
        )
        assert result.status_code is None and result.error and "resolves to" in result.error
    assert seen == []


async def test_loopback_only_with_the_operator_setting() -> None:
    client, seen = recording_client()
    refused = await attempt_delivery(
        client,
        claim("http://127.0.0.1:9999/h"),
        SECRET,
        allow_loopback=False,
        timeout_s=5,
        now=NOW,
    )
    assert refused.permanent and seen == []
    allowed = await attempt_delivery(
        client,
        claim("http://127.0.0.1:9999/h"),
        SECRET,
        allow_loopback=True,
        timeout_s=5,
        now=NOW,
    )
    assert allowed.status_code == 204


async def test_redirects_are_answers_not_followed() -> None:
    client, seen = recording_client(301, {"location": "https://elsewhere.example.com/"})
    result = await attempt_delivery(
        client,
        claim("https://hooks.example.com/"),
        SECRET,
        allow_loopback=False,
        timeout_s=5,
        now=NOW,
        resolver=Rebinding([PUBLIC]),
    )
    assert result.status_code == 301 and len(seen) == 1
    assert decide_after_attempt(1, 301, [10], NOW).outcome is AttemptOutcome.RETRY


async def test_429_carries_retry_after() -> None:
    client, _ = recording_client(429, {"retry-after": "120"})
    result = await attempt_delivery(
        client,
        claim("https://hooks.example.com/"),
        SECRET,
        allow_loopback=False,
        timeout_s=5,
        now=NOW,
        resolver=Rebinding([PUBLIC]),
    )
    assert result.retry_after == "120"


def test_v1_and_v1a_signatures() -> None:
    key = Ed25519PrivateKey.generate()
    body = '{"type":"job.completed","timestamp":"2026-01-02T03:04:05Z","data":{}}'
    headers = signature_headers(
        webhook_id="evt_1", timestamp=datetime.now(UTC), body=body, secret=SECRET, signing_key=key
    )
    v1, v1a = headers["webhook-signature"].split(" ")
    assert v1.startswith("v1,") and v1a.startswith("v1a,")
    # The Standard Webhooks library checks the v1 part and ignores v1a (it knows only v1).
    Webhook(SECRET).verify(body, headers)
    signed = f"evt_1.{headers['webhook-timestamp']}.{body}".encode()
    key.public_key().verify(base64.b64decode(v1a.split(",", 1)[1]), signed)


def test_signing_key_formats() -> None:
    raw = bytes(range(32))
    standard = base64.b64encode(raw).decode()
    urlsafe = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    for text in (standard, urlsafe):
        assert load_signing_key(text).private_bytes_raw() == raw
    for bad in ("not base64!", base64.b64encode(b"short").decode()):
        with pytest.raises(ValueError):
            load_signing_key(bad)


def test_410_gives_up_and_disables() -> None:
    decision = decide_after_attempt(1, 410, [10, 60], NOW)
    assert decision.outcome is AttemptOutcome.GIVE_UP and decision.disable_endpoint


def test_429_waits_at_least_retry_after_capped() -> None:
    longer = decide_after_attempt(1, 429, [10, 60], NOW, retry_after_s=300)
    assert longer.next_attempt_at == NOW + timedelta(seconds=300)
    shorter = decide_after_attempt(1, 429, [10, 60], NOW, retry_after_s=1)
    assert shorter.next_attempt_at == NOW + timedelta(seconds=10)
    capped = decide_after_attempt(1, 429, [10], NOW, retry_after_s=10**9, max_retry_after_s=3600)
    assert capped.next_attempt_at == NOW + timedelta(seconds=3600)
    # The schedule still bounds the attempts.
    assert decide_after_attempt(2, 429, [10], NOW, retry_after_s=5).outcome is (
        AttemptOutcome.GIVE_UP
    )


def test_parse_retry_after() -> None:
    assert parse_retry_after("120", NOW) == 120
    assert parse_retry_after("Fri, 02 Jan 2026 03:05:05 GMT", NOW) == 60
    assert parse_retry_after("Fri, 02 Jan 2026 03:00:00 GMT", NOW) == 0
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after(None, NOW) is None
