"""API models of the operator routes: request bodies and an account's JSON."""

from typing import Any

from pydantic import Field

from kiln_gateway.bodies import Strict
from kiln_gateway.tables import Account
from kiln_gateway.timestamps import iso_utc


class AccountCreate(Strict):
    email: str = Field(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")
    password: str = Field(min_length=8, max_length=256)
    name: str = Field(default="", max_length=200)


class CreditGrant(Strict):
    amount: str = Field(min_length=1, max_length=32, description="Credits as a decimal string.")
    reason: str = Field(default="", max_length=500)


def account_json(account: Account) -> dict[str, Any]:
    return {
        "id": account.id,
        "email": account.email,
        "name": account.name,
        "suspended": account.suspended,
        "created_at": iso_utc(account.created_at),
    }
