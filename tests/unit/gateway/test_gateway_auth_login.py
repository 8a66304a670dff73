"""Login pieces: password checks (same cost for unknown emails), client addresses."""

import time

import pytest
from starlette.requests import Request

from kiln_gateway.keys.login_throttle import client_address
from kiln_gateway.keys.passwords import hash_password, normalize_email, password_matches


async def test_a_password_matches_its_hash_only() -> None:
    stored = await hash_password("a long passphrase")
    assert stored.startswith("$argon2id$")
    assert await password_matches(stored, "a long passphrase")
    assert not await password_matches(stored, "a long passphrasE")
    assert not await password_matches("not a hash", "a long passphrase")


async def test_an_unknown_account_costs_a_hash_check_too() -> None:
    stored = await hash_password("a long passphrase")
    await password_matches(None, "warm up the dummy hash")

    async def cost(hash_value: str | None) -> float:
        """The fastest of a few checks: what the check costs, without the machine's noise."""
        times = []
        for _ in range(5):
            start = time.perf_counter()
            assert not await password_matches(hash_value, "wrong password")
            times.append(time.perf_counter() - start)
        return min(times)

    known, unknown = await cost(stored), await cost(None)
    assert 0.5 < unknown / known < 2.0, (known, unknown)


def test_emails_are_compared_trimmed_and_lowercase() -> None:
    assert normalize_email("  Ada@Example.COM ") == "ada@example.com"


def _request(peer: str, forwarded: list[str]) -> Request:
    headers = [(b"x-forwarded-for", v.encode()) for v in forwarded]
    return Request({"type": "http", "headers": headers, "client": (peer, 1234)})


@pytest.mark.parametrize(
    ("forwarded", "hops", "expected"),
    [
        ([], 0, "10.0.0.9"),
        (["1.2.3.4"], 0, "10.0.0.9"),  # not trusted: a client may send anything
        (["1.2.3.4"], 1, "1.2.3.4"),
        (["6.6.6.6, 1.2.3.4"], 1, "1.2.3.4"),  # the client forged the first entry
        (["6.6.6.6, 1.2.3.4, 10.0.0.2"], 2, "1.2.3.4"),
        (["6.6.6.6", "1.2.3.4"], 1, "1.2.3.4"),  # several header lines
        ([], 1, "10.0.0.9"),
    ],
)
def test_the_client_address_trusts_only_the_configured_proxies(
    forwarded: list[str], hops: int, expected: str
) -> None:
    assert client_address(_request("10.0.0.9", forwarded), hops) == expected
