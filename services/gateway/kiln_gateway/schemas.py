"""HTTP request bodies. Unknown fields are refused so that typos do not pass silently."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kiln_gateway.hostile_input import Metadata


class Strict(BaseModel):
    # strict: JSON types as the document says them (`"sandbox": 0` is not `false`).
    model_config = ConfigDict(extra="forbid", strict=True)


class AccountCreate(Strict):
    email: str = Field(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")
    password: str = Field(min_length=8, max_length=256)
    name: str = Field(default="", max_length=200)


class CreditGrant(Strict):
    amount: str = Field(min_length=1, max_length=32, description="Credits as a decimal string.")
    reason: str = Field(default="", max_length=500)


class KeyCreate(Strict):
    name: str = Field(min_length=1, max_length=200)
    sandbox: bool = False


class SandboxOptions(Strict):
    # "timeout": the job gets a short deadline (delay_s, else 2 s) that the sandbox model
    # overruns, and the scheduler fails it with TIMEOUT at that deadline.
    outcome: Literal["completed", "failed", "timeout"] = "completed"
    delay_s: float | None = Field(default=None, ge=0, le=600)


class JobCreate(Strict):
    model: str = Field(min_length=1, max_length=100)
    input: dict[str, Any]
    webhook_url: str | None = Field(default=None, max_length=2048)
    metadata: Metadata | None = None
    sandbox: SandboxOptions | None = None


class LoginRequest(Strict):
    # No format rule beyond sizes: a malformed email is just a failed login, like any other.
    email: str = Field(min_length=1, max_length=320)
    password: str = Field(min_length=1, max_length=256)
