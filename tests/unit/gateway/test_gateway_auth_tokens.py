"""Session tokens: HS256 JWTs with sub/iat/exp/jti/typ, refused when anything is off."""

import time

import jwt
import pytest

from kiln_gateway.config import GatewaySettings
from kiln_gateway.keys.session_tokens import (
    InvalidSessionToken,
    issue_session_token,
    signing_key,
    verify_session_token,
)

KEY = "k" * 40


def test_a_token_names_its_account_and_carries_the_claims() -> None:
    issued = issue_session_token("acct_1", KEY, ttl_s=3600, now=1_900_000_000)
    claims = jwt.decode(
        issued.token, KEY, algorithms=["HS256"], options={"verify_exp": False, "verify_iat": False}
    )
    assert claims["sub"] == "acct_1"
    assert claims["typ"] == "session"
    assert claims["exp"] - claims["iat"] == 3600
    assert len(claims["jti"]) == 32
    assert jwt.get_unverified_header(issued.token)["alg"] == "HS256"
    assert issued.expires_at.timestamp() == 1_900_000_000 + 3600


def test_a_fresh_token_verifies() -> None:
    issued = issue_session_token("acct_1", KEY, ttl_s=60)
    assert verify_session_token(issued.token, KEY) == "acct_1"


def test_two_tokens_differ_by_their_id() -> None:
    a = issue_session_token("acct_1", KEY, ttl_s=60, now=1_900_000_000)
    b = issue_session_token("acct_1", KEY, ttl_s=60, now=1_900_000_000)
    assert a.token != b.token


def test_an_expired_token_is_refused() -> None:
    issued = issue_session_token("acct_1", KEY, ttl_s=60, now=time.time() - 120)
    with pytest.raises(InvalidSessionToken, match="expired"):
        verify_session_token(issued.token, KEY)


def test_another_key_is_refused() -> None:
    issued = issue_session_token("acct_1", KEY, ttl_s=60)
    with pytest.raises(InvalidSessionToken):
        verify_session_token(issued.token, "o" * 40)


def test_a_tampered_token_is_refused() -> None:
    issued = issue_session_token("acct_1", KEY, ttl_s=60)
    header, _, signature = issued.token.split(".")
    forged = jwt.encode(
        {"sub": "acct_2", "iat": 1, "exp": 2**31, "jti": "x", "typ": "session"},
        "o" * 40,
        algorithm="HS256",
    ).split(".")[1]
    with pytest.raises(InvalidSessionToken):
        verify_session_token(f"{header}.{forged}.{signature}", KEY)


def test_alg_none_is_refused() -> None:
    claims = {"sub": "acct_1", "iat": 1, "exp": 2**31, "jti": "x", "typ": "session"}
    unsigned = jwt.encode(claims, None, algorithm="none")  # type: ignore[arg-type]
    with pytest.raises(InvalidSessionToken):
        verify_session_token(unsigned, KEY)


@pytest.mark.parametrize("missing", ["sub", "iat", "exp", "jti", "typ"])
def test_every_claim_is_required(missing: str) -> None:
    claims = {"sub": "acct_1", "iat": int(time.time()), "exp": 2**31, "jti": "x", "typ": "session"}
    del claims[missing]
    with pytest.raises(InvalidSessionToken):
        verify_session_token(jwt.encode(claims, KEY, algorithm="HS256"), KEY)


def test_a_token_of_another_type_is_refused() -> None:
    claims = {"sub": "acct_1", "iat": int(time.time()), "exp": 2**31, "jti": "x", "typ": "file"}
    with pytest.raises(InvalidSessionToken, match="not a session"):
        verify_session_token(jwt.encode(claims, KEY, algorithm="HS256"), KEY)


@pytest.mark.parametrize("garbage", ["", "x", "a.b.c", "sk_live_abc", "é" * 10])
def test_garbage_is_refused(garbage: str) -> None:
    with pytest.raises(InvalidSessionToken):
        verify_session_token(garbage, KEY)


def test_the_configured_key_is_used_else_one_per_process() -> None:
    assert signing_key(GatewaySettings(session_signing_key=KEY)) == KEY
    fallback = signing_key(GatewaySettings(session_signing_key=""))
    assert len(fallback) >= 32
    assert signing_key(GatewaySettings(session_signing_key="")) == fallback


def test_a_short_configured_key_is_refused() -> None:
    with pytest.raises(ValueError):
        GatewaySettings(session_signing_key="short")
