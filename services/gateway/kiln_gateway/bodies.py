"""The base of every HTTP request body. Unknown fields are refused so that typos do not pass
silently, and JSON types are strict (`"sandbox": 0` is not `false`)."""

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
