"""The SDK's errors.

Every HTTP error answer becomes an :class:`APIError` subclass chosen by the API's machine code
(or, failing that, by the status), carrying ``status``, ``code``, ``message``, ``request_id``
and ``details``. Failures of a job (not of a request) are :class:`JobError`\\s that carry the
job, so a caller can inspect what failed without another request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from kiln_client.models import JobBase

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "BadRequest",
    "Conflict",
    "ContentPolicy",
    "DecryptionError",
    "Forbidden",
    "InsufficientCredits",
    "InternalServerError",
    "JobCanceled",
    "JobError",
    "JobFailed",
    "KilnError",
    "MissingCredentials",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "ServerError",
    "Unauthorized",
    "Unavailable",
    "ValidationError",
    "WaitTimeout",
    "WebhookVerificationError",
    "error_for_response",
]


class KilnError(Exception):
    """Base class of every error this package raises."""


class MissingCredentials(KilnError):
    """No API key (or session token) was given nor found in the environment."""


class APIConnectionError(KilnError):
    """No HTTP answer: the connection failed or broke (after the retries)."""

    def __init__(self, message: str, *, request: httpx.Request | None = None) -> None:
        super().__init__(message)
        self.request = request


class APITimeoutError(APIConnectionError):
    """No answer within the timeout (after the retries)."""


class APIError(KilnError):
    """The API answered with an error envelope (or an error status)."""

    status: int = 0

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str,
        request_id: str | None = None,
        details: list[dict[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.request_id = request_id
        self.details = details or []
        self.headers: dict[str, str] = dict(headers or {})
        self.body = body

    def __str__(self) -> str:
        text = f"{self.status} {self.code}: {self.message}"
        if self.details:
            text += " (" + "; ".join(_detail_text(d) for d in self.details) + ")"
        if self.request_id:
            text += f" [request {self.request_id}]"
        return text


def _detail_text(detail: Mapping[str, Any]) -> str:
    field, message = detail.get("field"), detail.get("message")
    return f"{field}: {message}" if field else str(message)


class BadRequest(APIError):
    """400 ``BAD_REQUEST``: malformed JSON, a bad header."""


class Unauthorized(APIError):
    """401 ``UNAUTHORIZED``: missing, unknown or revoked credentials."""


class InsufficientCredits(APIError):
    """402 ``INSUFFICIENT_CREDITS``: the account cannot pay; nothing was queued."""


class Forbidden(APIError):
    """403 ``FORBIDDEN``: the account is suspended."""


class NotFound(APIError):
    """404 ``NOT_FOUND``: no such object for this caller."""


class Conflict(APIError):
    """409 ``CONFLICT``: the object's state forbids it, or an idempotency key was reused."""


class PayloadTooLarge(APIError):
    """413 ``PAYLOAD_TOO_LARGE``."""


class ValidationError(APIError):
    """422 ``VALIDATION_ERROR``: ``details`` names each bad field."""


class ContentPolicy(APIError):
    """422 ``CONTENT_POLICY``: Kiln does not generate what the request asks for."""


class RateLimited(APIError):
    """429 ``RATE_LIMITED``; ``retry_after`` is the wait the server asked for, in seconds."""

    @property
    def retry_after(self) -> float | None:
        from kiln_client._retries import retry_after_seconds

        return retry_after_seconds(self.headers)


class ServerError(APIError):
    """A 5xx answer."""


class InternalServerError(ServerError):
    """500 ``INTERNAL_ERROR``: a bug on the server's side."""


class Unavailable(ServerError):
    """503 ``UNAVAILABLE``: a dependency of the server is down; retry later."""


_BY_CODE: dict[str, type[APIError]] = {
    "BAD_REQUEST": BadRequest,
    "UNAUTHORIZED": Unauthorized,
    "INSUFFICIENT_CREDITS": InsufficientCredits,
    "FORBIDDEN": Forbidden,
    "NOT_FOUND": NotFound,
    "CONFLICT": Conflict,
    "PAYLOAD_TOO_LARGE": PayloadTooLarge,
    "VALIDATION_ERROR": ValidationError,
    "CONTENT_POLICY": ContentPolicy,
    "RATE_LIMITED": RateLimited,
    "INTERNAL_ERROR": InternalServerError,
    "UNAVAILABLE": Unavailable,
}

_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequest,
    401: Unauthorized,
    402: InsufficientCredits,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: ValidationError,
    429: RateLimited,
    500: InternalServerError,
    503: Unavailable,
}

_DEFAULT_CODES = {cls: code for code, cls in _BY_CODE.items()}


def error_for_response(response: httpx.Response) -> APIError:
    """The typed error for an error answer, from its envelope when it has one.

    A proxy in front of Kiln may answer with HTML or nothing; the status then chooses the type.
    """
    body: Any = None
    envelope: Mapping[str, Any] = {}
    try:
        body = response.json()
    except ValueError:
        body = response.text
    if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
        envelope = body["error"]
    status = response.status_code
    code = envelope.get("code") if isinstance(envelope.get("code"), str) else None
    cls = _BY_CODE.get(code or "") or _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else APIError
    if code is None:
        code = _DEFAULT_CODES.get(cls, "HTTP_ERROR")
    message = envelope.get("message")
    if not isinstance(message, str) or not message:
        message = response.reason_phrase or f"HTTP {status}"
    details = envelope.get("details")
    request_id = envelope.get("request_id") or response.headers.get("x-request-id")
    return cls(
        message,
        status=status,
        code=code,
        request_id=request_id if isinstance(request_id, str) else None,
        details=[d for d in details if isinstance(d, dict)] if isinstance(details, list) else None,
        headers=response.headers,
        body=body,
    )


class JobError(KilnError):
    """A job ended otherwise than ``completed``, or did not end in time; ``job`` is it."""

    def __init__(self, message: str, job: JobBase[Any]) -> None:
        super().__init__(message)
        self.job = job


class JobFailed(JobError):
    """The job failed; ``code`` and ``message`` are the job's ``error``."""

    def __init__(self, job: JobBase[Any]) -> None:
        self.code = job.error.code if job.error else "UNKNOWN"
        self.error_message = job.error.message if job.error else ""
        super().__init__(f"job {job.id} failed: {self.code}: {self.error_message}", job)


class JobCanceled(JobError):
    """The job was canceled (and refunded)."""

    def __init__(self, job: JobBase[Any]) -> None:
        super().__init__(f"job {job.id} was canceled", job)


class WaitTimeout(JobError):
    """The wait ended before the job did; ``job`` is its last known state."""

    def __init__(self, job: JobBase[Any], timeout: float) -> None:
        self.timeout = timeout
        super().__init__(f"job {job.id} is still {job.status} after waiting {timeout:g} s", job)


class DecryptionError(KilnError, ValueError):
    """A result cannot be decrypted: wrong secret or job, or an altered or incomplete blob."""


class WebhookVerificationError(KilnError):
    """A webhook's signature, timestamp or body is not valid."""
