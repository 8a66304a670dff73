"""API models of keys and sessions: request bodies, response shapes, and a key's JSON."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from kiln_gateway.bodies import Strict
from kiln_gateway.pagination import Pagination
from kiln_gateway.tables import ApiKey
from kiln_gateway.timestamps import iso_utc

# ------------------------------------------------------------------------- request bodies


class KeyCreate(Strict):
    name: str = Field(min_length=1, max_length=200)
    sandbox: bool = False


class LoginRequest(Strict):
    # No format rule beyond sizes: a malformed email is just a failed login, like any other.
    email: str = Field(min_length=1, max_length=320)
    password: str = Field(min_length=1, max_length=256)


# ------------------------------------------------------------------------- response shapes


class ApiKeyData(BaseModel):
    id: str
    name: str
    prefix: str = Field(description="The secret's first characters, to recognise it.")
    kind: Literal["live", "sandbox"]
    sandbox: bool
    created_at: str
    last_used_at: str | None
    revoked_at: str | None


class NewApiKeyData(ApiKeyData):
    secret: str = Field(description="The API secret. Shown only in this response.")
    rotated_from: str | None = Field(default=None, description="The key this one replaced.")


class ApiKeyResponse(BaseModel):
    data: ApiKeyData


class NewApiKeyResponse(BaseModel):
    data: NewApiKeyData


class ApiKeyListResponse(BaseModel):
    data: list[ApiKeyData]
    pagination: Pagination


class SessionTokenData(BaseModel):
    token: str
    token_type: Literal["bearer"] = "bearer"
    expires_at: datetime


class SessionTokenResponse(BaseModel):
    data: SessionTokenData


def key_json(key: ApiKey, secret: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "kind": "sandbox" if key.sandbox else "live",
        "sandbox": key.sandbox,
        "created_at": iso_utc(key.created_at),
        "last_used_at": iso_utc(key.last_used_at),
        "revoked_at": iso_utc(key.revoked_at),
    }
    if secret is not None:
        body["secret"] = secret
    return body
