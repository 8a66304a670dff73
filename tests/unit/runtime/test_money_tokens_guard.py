import ipaddress
from datetime import UTC, datetime, timedelta

import pytest

from kiln_runtime.file_tokens import FileGrant, InvalidFileToken, sign_file_token, verify_file_token
from kiln_runtime.money import InvalidAmount, format_credits, parse_credits
from kiln_runtime.url_guard import UnsafeUrl, address_refusal, check_url_shape


@pytest.mark.parametrize(
    ("text", "millis"), [("12.5", 12_500), ("1000", 1_000_000), ("-0.5", -500), ("0.001", 1)]
)
def test_credits_parse_to_integer_millicredits(text: str, millis: int) -> None:
    assert parse_credits(text) == millis
    assert parse_credits(format_credits(millis)) == millis


@pytest.mark.parametrize("text", ["", "1e3", "NaN", "0.0001", "abc", "1,5", "inf"])
def test_bad_amounts_are_refused(text: str) -> None:
    with pytest.raises(InvalidAmount):
        parse_credits(text)


def test_file_tokens_verify_and_expire() -> None:
    expires = datetime.now(UTC) + timedelta(hours=1)
    token = sign_file_token(FileGrant("results/a/j", "image/png", expires), "k1")
    grant = verify_file_token(token, "k1")
    assert (grant.blob_key, grant.content_type) == ("results/a/j", "image/png")
    with pytest.raises(InvalidFileToken):
        verify_file_token(token, "k2")
    with pytest.raises(InvalidFileToken):
        verify_file_token(token, "k1", now=expires + timedelta(seconds=1))
    body, mac = token.split(".")
    with pytest.raises(InvalidFileToken):
        verify_file_token(body[:-2] + "AA." + mac, "k1")
    with pytest.raises(InvalidFileToken):
        verify_file_token("not-a-token", "k1")


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "169.254.1.1",
        "100.64.0.1",
        "0.0.0.0",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "224.0.0.1",
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address), allow_loopback=False) is not None


def test_public_addresses_pass_and_loopback_only_when_allowed() -> None:
    assert address_refusal(ipaddress.ip_address("93.184.216.34"), allow_loopback=False) is None
    assert address_refusal(ipaddress.ip_address("127.0.0.1"), allow_loopback=True) is None
    assert address_refusal(ipaddress.ip_address("10.0.0.1"), allow_loopback=True) is not None


def test_url_shape() -> None:
    assert check_url_shape("https://example.com/h", allow_loopback=False).port == 443
    for bad in ["http://example.com", "ftp://x", "https://u:p@example.com", "https:///x"]:
        with pytest.raises(UnsafeUrl):
            check_url_shape(bad, allow_loopback=False)
    assert check_url_shape("http://127.0.0.1:9/h", allow_loopback=True).scheme == "http"
