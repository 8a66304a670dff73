"""POST /api/v1/auth/token on the real app and a real SQLite database (no Kafka needed)."""

import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from kiln_gateway.keys.session_tokens import issue_session_token
from tests.integration.gateway.conftest import (
    PASSWORD,
    Gateway,
    bearer,
    gateway_without_kafka,
    make_settings,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def throttled(tmp_path: Path) -> Iterator[Gateway]:
    settings = make_settings(
        tmp_path,
        login_max_failures_per_email=3,
        login_max_failures_per_ip=5,
        login_failure_window_s=120,
        trusted_proxy_hops=1,
    )
    with gateway_without_kafka(settings) as running:
        # Inside one window whatever the wall clock: a test that straddled a window's end
        # would see its failures forgotten.
        frozen = (time.time() // 120) * 120 + 60
        running.state.rate_limiter.clock = lambda: frozen
        yield running


def login(gw: Gateway, email: str, password: str, address: str = "198.51.100.1") -> httpx.Response:
    return gw.client.post(
        "/auth/token",
        json={"email": email, "password": password},
        headers={"X-Forwarded-For": address},
    )


def test_a_login_returns_a_signed_session_token(gateway: Gateway) -> None:
    account = gateway.create_account("Ada@Example.com")
    response = gateway.client.post(
        "/auth/token", json={"email": " ADA@example.com", "password": PASSWORD}
    )
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["token_type"] == "bearer"
    claims = jwt.decode(data["token"], gateway.settings.session_signing_key, algorithms=["HS256"])
    assert claims["sub"] == account["id"]
    assert claims["typ"] == "session"
    assert claims["exp"] - claims["iat"] == gateway.settings.session_ttl_s
    assert data["expires_at"].startswith(time.strftime("%Y-", time.gmtime(claims["exp"])))
    # The token works for key management.
    assert gateway.client.get("/keys", headers=bearer(data["token"])).status_code == 200


def test_wrong_password_and_unknown_email_look_the_same(gateway: Gateway) -> None:
    gateway.create_account("ada@example.com")

    def attempt(email: str) -> tuple[int, dict[str, object], float]:
        start = time.perf_counter()
        response = gateway.client.post(
            "/auth/token", json={"email": email, "password": "wrong password"}
        )
        elapsed = time.perf_counter() - start
        error = response.json()["error"]
        error.pop("request_id")
        return response.status_code, error, elapsed

    wrong = [attempt("ada@example.com") for _ in range(3)]
    unknown = [attempt(f"nobody{i}@example.com") for i in range(3)]
    assert {(s, str(e)) for s, e, _ in wrong} == {(s, str(e)) for s, e, _ in unknown}
    assert wrong[0][:2] == (401, {"code": "UNAUTHORIZED", "message": "Invalid email or password."})
    # Both check a password hash: the times are of the same order (argon2 dominates). The
    # fastest of each is compared, which the machine's other work disturbs least.
    ratio = min(t for *_, t in unknown) / min(t for *_, t in wrong)
    assert 0.5 < ratio < 2.0, ratio


def test_a_suspended_account_cannot_log_in(gateway: Gateway) -> None:
    account = gateway.create_account("ada@example.com")
    token = gateway.login("ada@example.com")
    gateway.admin("POST", f"/admin/accounts/{account['id']}/suspend")
    response = gateway.client.post(
        "/auth/token", json={"email": "ada@example.com", "password": PASSWORD}
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "FORBIDDEN"
    # A session issued before the suspension stops working too.
    assert gateway.client.get("/keys", headers=bearer(token)).status_code == 403
    # A wrong password still says nothing about the account.
    wrong = gateway.client.post("/auth/token", json={"email": "ada@example.com", "password": "x"})
    assert wrong.status_code == 401
    gateway.admin("POST", f"/admin/accounts/{account['id']}/resume")
    assert gateway.login("ada@example.com")


def test_failures_per_email_are_slowed_down_with_retry_after(throttled: Gateway) -> None:
    throttled.create_account("ada@example.com")
    for i in range(3):  # the allowed failures, from three addresses
        assert login(throttled, "ada@example.com", "wrong", f"203.0.113.{i}").status_code == 401
    refused = login(throttled, "ada@example.com", PASSWORD, "203.0.113.9")
    assert refused.status_code == 429  # even the right password: no more guesses now
    assert refused.json()["error"]["code"] == "RATE_LIMITED"
    assert 1 <= int(refused.headers["Retry-After"]) <= 120
    # Another email from the same addresses is not affected.
    throttled.create_account("bob@example.com")
    assert login(throttled, "bob@example.com", PASSWORD, "203.0.113.0").status_code == 200
    # When the window ends, the account can log in again.
    later = throttled.state.rate_limiter.clock() + 120
    throttled.state.rate_limiter.clock = lambda: later
    assert login(throttled, "ada@example.com", PASSWORD, "203.0.113.9").status_code == 200


def test_failures_per_address_are_slowed_down_whatever_the_email(throttled: Gateway) -> None:
    throttled.create_account("ada@example.com")
    for i in range(5):
        assert login(throttled, f"guess{i}@example.com", "wrong").status_code == 401
    refused = login(throttled, "ada@example.com", PASSWORD)
    assert refused.status_code == 429
    assert "Retry-After" in refused.headers
    # The same account from another address is fine.
    assert login(throttled, "ada@example.com", PASSWORD, "198.51.100.2").status_code == 200


def test_successful_logins_do_not_count_as_failures(throttled: Gateway) -> None:
    throttled.create_account("ada@example.com")
    for _ in range(2):
        assert login(throttled, "ada@example.com", "wrong").status_code == 401
    assert login(throttled, "ada@example.com", PASSWORD).status_code == 200  # clears the email
    for _ in range(3):
        assert login(throttled, "ada@example.com", "wrong").status_code == 401
    assert login(throttled, "ada@example.com", "wrong").status_code == 429
    # Seven attempts from one address, five failures: the address budget (5) is spent, not more.
    assert login(throttled, "zed@example.com", "wrong").status_code == 429


def test_racing_failures_are_counted_exactly(throttled: Gateway) -> None:
    throttled.create_account("ada@example.com")

    def attempt(i: int) -> int:
        return login(throttled, "ada@example.com", "wrong", f"203.0.113.{i}").status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(attempt, range(8)))
    assert sorted(codes) == [401] * 3 + [429] * 5


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer",
        "Basic abc",
        "Bearer not-a-jwt",
        "Bearer sk_live_" + "a" * 43,
        "Bearer " + "x" * 600,
    ],
)
def test_key_management_needs_a_valid_session(gateway: Gateway, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = gateway.client.get("/keys", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "UNAUTHORIZED"


def test_expired_foreign_or_orphan_sessions_are_refused(gateway: Gateway) -> None:
    account = gateway.create_account("ada@example.com")
    key = gateway.settings.session_signing_key
    expired = issue_session_token(account["id"], key, ttl_s=60, now=time.time() - 61).token
    foreign = issue_session_token(account["id"], "z" * 40, ttl_s=60).token
    orphan = issue_session_token("acct_" + "0" * 32, key, ttl_s=60).token
    for token in (expired, foreign, orphan):
        response = gateway.client.get("/keys", headers=bearer(token))
        assert response.status_code == 401, token


def test_a_session_is_not_an_api_key(gateway: Gateway) -> None:
    gateway.create_account("ada@example.com")
    token = gateway.login("ada@example.com")
    assert gateway.client.get("/models", headers=bearer(token)).status_code == 401


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"email": "a@b.c"},
        {"email": "a@b.c", "password": ""},
        {"email": 1, "password": 2},
        {"email": "a@b.c", "password": "x" * 300},
        {"email": "a@b.c", "password": "p", "x": 1},
    ],
)
def test_malformed_logins_are_4xx(gateway: Gateway, body: dict[str, object]) -> None:
    response = gateway.client.post("/auth/token", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "VALIDATION_ERROR"
