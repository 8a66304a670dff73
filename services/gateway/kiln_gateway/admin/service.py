"""Operator decisions: a new account's row, and what a credit grant may be."""

from kiln_crypto import SecretsKeyring
from kiln_gateway.errors import BadRequest
from kiln_gateway.ids import new_id
from kiln_gateway.keys.passwords import normalize_email
from kiln_gateway.tables import Account
from kiln_gateway.webhooks.service import new_sealed_webhook_secret
from kiln_runtime.money import InvalidAmount, parse_credits


def new_account(email: str, name: str, password_hash: str, keyring: SecretsKeyring) -> Account:
    _, sealed = new_sealed_webhook_secret(keyring)
    return Account(
        id=new_id("acct"),
        email=normalize_email(email),
        name=name,
        password_hash=password_hash,
        sealed_webhook_secret=sealed,
        legacy_default_webhook_secret="",
    )


def grant_amount(amount: str) -> int:
    """Millicredits of a grant given in credits (a decimal string; negative revokes)."""
    try:
        millicredits = parse_credits(amount)
    except InvalidAmount as exc:
        raise BadRequest(str(exc), [{"field": "amount", "message": str(exc)}]) from exc
    if millicredits == 0:
        raise BadRequest("amount must not be zero", [{"field": "amount", "message": "zero"}])
    return millicredits
