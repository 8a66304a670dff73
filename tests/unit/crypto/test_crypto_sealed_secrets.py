"""The operator's keyring for stored secrets (kiln_crypto.sealed_secrets): sealing hides the
secret, every listed key opens, the first key seals, rotation re-seals, and bad settings say
what is wrong without quoting a key."""

import base64

import pytest
from cryptography.fernet import Fernet

from kiln_crypto import (
    SealedSecretError,
    SecretsKeyError,
    SecretsKeyring,
    new_secrets_key,
    parse_secrets_keys,
)

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()


def test_a_sealed_secret_hides_it_and_opens_to_it() -> None:
    keyring = SecretsKeyring([new_secrets_key()])
    sealed = keyring.seal(SECRET)
    assert SECRET not in sealed and SECRET.removeprefix("whsec_") not in sealed
    assert keyring.open(sealed) == SECRET
    # A random IV per token: sealing twice gives two tokens.
    assert keyring.seal(SECRET) != sealed


def test_the_first_key_seals_and_every_listed_key_opens() -> None:
    old, new = new_secrets_key(), new_secrets_key()
    sealed_by_old = SecretsKeyring([old]).seal(SECRET)
    both = SecretsKeyring([new, old])
    assert both.open(sealed_by_old) == SECRET
    assert not both.sealed_with_first_key(sealed_by_old)
    sealed_by_both = both.seal(SECRET)
    assert both.sealed_with_first_key(sealed_by_both)
    assert Fernet(new).decrypt(sealed_by_both.encode()) == SECRET.encode()
    with pytest.raises(SealedSecretError):
        SecretsKeyring([old]).open(sealed_by_both)


def test_reseal_moves_a_secret_to_the_first_key() -> None:
    old, new = new_secrets_key(), new_secrets_key()
    sealed = SecretsKeyring([old]).seal(SECRET)
    resealed = SecretsKeyring([new, old]).reseal(sealed)
    assert SecretsKeyring([new]).open(resealed) == SECRET
    with pytest.raises(SealedSecretError):
        SecretsKeyring([new]).reseal(sealed)


@pytest.mark.parametrize(
    "sealed",
    ["", "whsec_abc", "not a token at all", "gAAAAAB" + "A" * 100, "é"],
)
def test_what_no_key_opens_is_a_typed_error(sealed: str) -> None:
    keyring = SecretsKeyring([new_secrets_key()])
    with pytest.raises(SealedSecretError):
        keyring.open(sealed)
    assert not keyring.sealed_with_first_key(sealed)


def test_a_tampered_token_does_not_open() -> None:
    keyring = SecretsKeyring([new_secrets_key()])
    raw = bytearray(base64.urlsafe_b64decode(keyring.seal(SECRET)))
    raw[40] ^= 1
    with pytest.raises(SealedSecretError):
        keyring.open(base64.urlsafe_b64encode(bytes(raw)).decode())


def test_the_setting_is_a_comma_separated_list() -> None:
    first, second = new_secrets_key(), new_secrets_key()
    assert parse_secrets_keys(f" {first} , {second},") == [first, second]
    keyring = SecretsKeyring.from_setting(f"{first},{second}")
    assert keyring.key_count == 2
    assert Fernet(first).decrypt(keyring.seal(SECRET).encode()) == SECRET.encode()


@pytest.mark.parametrize("value", ["", " ", ",", " , "])
def test_an_empty_setting_says_how_to_make_a_key(value: str) -> None:
    with pytest.raises(SecretsKeyError, match="KILN_SECRETS_KEYS is not set"):
        SecretsKeyring.from_setting(value)


def test_a_malformed_key_is_named_by_its_place_never_quoted() -> None:
    bad = "this-is-not-a-fernet-key-but-a-secret-value"
    with pytest.raises(SecretsKeyError) as raised:
        SecretsKeyring.from_setting(f"{new_secrets_key()},{bad}")
    assert "key 2 of KILN_SECRETS_KEYS" in str(raised.value)
    assert bad not in str(raised.value)
