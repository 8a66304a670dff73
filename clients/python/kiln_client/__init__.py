"""Kiln's Python SDK: `Kiln` and its async twin `AsyncKiln` (docs/client.md).

from kiln_client import Kiln

kiln = Kiln()  # reads KILN_API_KEY and KILN_API_URL
job = kiln.run("kiln/prompt-to-image", {"prompt": "a lighthouse in a storm"})
job.result.save("lighthouse.png")  # downloaded and decrypted (kiln-hpke-v1)
"""

from kiln_client._version import __version__
from kiln_client.async_client import AsyncJobHandle, AsyncKiln
from kiln_client.client import JobHandle, Kiln
from kiln_client.decryption import Encryption, decrypt_bytes, decrypt_file, decrypt_stream
from kiln_client.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    BadRequest,
    Conflict,
    ContentPolicy,
    DecryptionError,
    Forbidden,
    InsufficientCredits,
    InternalServerError,
    JobCanceled,
    JobError,
    JobFailed,
    KilnError,
    MissingCredentials,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    Unauthorized,
    Unavailable,
    ValidationError,
    WaitTimeout,
    WebhookVerificationError,
)
from kiln_client.models import (
    AccountEvent,
    ApiKey,
    AsyncJob,
    AsyncResult,
    Delivery,
    Job,
    Model,
    Quote,
    Result,
    Usage,
    UsageStats,
    WebhookEndpoint,
)
from kiln_client.signatures import WebhookEvent, sign_webhook, verify_webhook

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AccountEvent",
    "ApiKey",
    "AsyncJob",
    "AsyncJobHandle",
    "AsyncKiln",
    "AsyncResult",
    "BadRequest",
    "Conflict",
    "ContentPolicy",
    "DecryptionError",
    "Delivery",
    "Encryption",
    "Forbidden",
    "InsufficientCredits",
    "InternalServerError",
    "Job",
    "JobCanceled",
    "JobError",
    "JobFailed",
    "JobHandle",
    "Kiln",
    "KilnError",
    "MissingCredentials",
    "Model",
    "NotFound",
    "PayloadTooLarge",
    "Quote",
    "RateLimited",
    "Result",
    "ServerError",
    "Unauthorized",
    "Unavailable",
    "Usage",
    "UsageStats",
    "ValidationError",
    "WaitTimeout",
    "WebhookEndpoint",
    "WebhookEvent",
    "WebhookVerificationError",
    "__version__",
    "decrypt_bytes",
    "decrypt_file",
    "decrypt_stream",
    "sign_webhook",
    "verify_webhook",
]
