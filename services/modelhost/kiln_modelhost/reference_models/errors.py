"""Typed errors raised by the reference models.

Each error carries a machine-readable ``code``; ``str(error)`` is ``"CODE: message"`` so that the
code survives being turned into text (Triton passes model errors to clients as text only).
"""

from __future__ import annotations

from typing import ClassVar


class ModelError(Exception):
    """Base class of every error a reference model raises on purpose."""

    code: ClassVar[str] = "MODEL_ERROR"
    #: whether running the same request again may succeed
    retryable: ClassVar[bool] = True

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class ModelInputError(ModelError, ValueError):
    """The request itself is invalid: running it again cannot succeed."""

    code: ClassVar[str] = "INVALID_INPUT"
    retryable: ClassVar[bool] = False


class ModelRuntimeError(ModelError, RuntimeError):
    """The model failed on a valid request (crash, timeout, missing tool): may be transient."""

    code: ClassVar[str] = "MODEL_ERROR"
    retryable: ClassVar[bool] = True


class SandboxFailedError(ModelError):
    """The sandbox model was asked to fail (``outcome: "failed"``)."""

    code: ClassVar[str] = "SANDBOX_FAILED"
    retryable: ClassVar[bool] = False
