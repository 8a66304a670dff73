"""Typed views of the API's objects. Each keeps the JSON it came from in ``raw`` (what the CLI
prints, and a way to reach fields this version does not know yet).

A job's ``result`` can download and decrypt itself: :class:`Result` for jobs from the sync
client, :class:`AsyncResult` (awaitable methods) for jobs from the async one.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio
import httpx

from kiln_client.decryption import ChunkDecryptor, Encryption, write_atomically
from kiln_client.errors import APIConnectionError, KilnError, MissingCredentials

if TYPE_CHECKING:
    from kiln_client._http import AsyncHTTP, SyncHTTP

__all__ = [
    "TERMINAL_STATUSES",
    "AccountEvent",
    "ApiKey",
    "AsyncJob",
    "AsyncResult",
    "Delivery",
    "DeliveryAttempt",
    "Job",
    "JobBase",
    "JobErrorInfo",
    "Model",
    "Page",
    "Quote",
    "Redelivery",
    "Result",
    "SessionToken",
    "TestEvent",
    "Usage",
    "UsageStats",
    "UsageStatsRow",
    "WebhookEndpoint",
]

TERMINAL_STATUSES = frozenset({"completed", "failed", "canceled"})

T = TypeVar("T")


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def parse_credits(value: Any) -> Decimal | None:
    if value is None:
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def _dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


# ------------------------------------------------------------------------------ results


@dataclass(frozen=True)
class ResultBase:
    """A completed job's encrypted result: where to download it and how to decrypt it."""

    job_id: str
    url: str
    expires_at: datetime | None
    content_type: str
    size_bytes: int
    encryption: Encryption
    raw: dict[str, Any] = field(repr=False, compare=False)
    default_secret: str | None = field(default=None, repr=False, compare=False)

    def secret_for(self, secret: str | None) -> str:
        chosen = secret or self.default_secret or os.environ.get("KILN_API_KEY")
        if not chosen:
            raise MissingCredentials(
                f"decrypting needs the secret of API key {self.encryption.key_id}: pass secret="
            )
        return chosen

    @classmethod
    def parse(cls, job_id: str, data: Mapping[str, Any], **bound: Any) -> Any:
        return cls(
            job_id=job_id,
            url=str(data.get("url", "")),
            expires_at=parse_time(data.get("expires_at")),
            content_type=str(data.get("content_type", "application/octet-stream")),
            size_bytes=int(data.get("size_bytes") or 0),
            encryption=Encryption.from_dict(_dict(data.get("encryption"))),
            raw=dict(data),
            **bound,
        )


def _transport_error(error: httpx.TransportError) -> APIConnectionError:
    return APIConnectionError(f"the download broke off: {error!r}")


@dataclass(frozen=True)
class Result(ResultBase):
    http: SyncHTTP | None = field(default=None, repr=False, compare=False)

    def _http(self) -> tuple[SyncHTTP, bool]:
        if self.http is not None:
            return self.http, False
        from kiln_client._http import SyncHTTP
        from kiln_client._options import ClientOptions

        options = ClientOptions.resolve(
            api_key=None,
            base_url=None,
            session_token=None,
            timeout=None,
            total_timeout=None,
            max_retries=None,
            respond_async=False,
            default_headers=None,
        )
        return SyncHTTP(options, httpx.Client()), True

    def iter_encrypted(self) -> Iterator[bytes]:
        """The blob as downloaded (still encrypted)."""
        http, owned = self._http()
        try:
            with http.download(self.url) as response:
                try:
                    yield from response.iter_bytes()
                except httpx.TransportError as exc:
                    raise _transport_error(exc) from exc
        finally:
            if owned:
                http.client.close()

    def iter_bytes(self, *, secret: str | None = None) -> Iterator[bytes]:
        """The plaintext in pieces, in constant memory. Authentication of the whole is known
        only at the end: if iterating raises, discard what it yielded."""
        decryptor = ChunkDecryptor(self.secret_for(secret), self.job_id, self.encryption)
        for piece in self.iter_encrypted():
            plain = decryptor.feed(piece)
            if plain:
                yield plain
        yield decryptor.finish()

    def _retrying(self, attempt: Any) -> Any:
        retries = self.http.options.retry.max_retries if self.http is not None else 3
        for tries_left in range(retries, -1, -1):
            try:
                return attempt()
            except APIConnectionError:
                if tries_left == 0:
                    raise
        raise AssertionError("unreachable")

    def read(self, *, secret: str | None = None) -> bytes:
        """The whole plaintext, only if all of it authenticates."""
        return bytes(self._retrying(lambda: b"".join(self.iter_bytes(secret=secret))))

    def save(self, path: str | os.PathLike[str], *, secret: str | None = None) -> Path:
        """Download, decrypt and write to ``path``; no file (not even a partial one) on
        failure. A download that breaks off is started again."""
        secret = self.secret_for(secret)
        return Path(self._retrying(lambda: write_atomically(path, self.iter_bytes(secret=secret))))

    def save_encrypted(self, path: str | os.PathLike[str]) -> Path:
        """Download the blob without decrypting it (`kiln decrypt` can do that later)."""
        return Path(self._retrying(lambda: write_atomically(path, self.iter_encrypted())))


@dataclass(frozen=True)
class AsyncResult(ResultBase):
    http: AsyncHTTP | None = field(default=None, repr=False, compare=False)

    async def iter_encrypted(self) -> AsyncIterator[bytes]:
        http = self.http
        owned = http is None
        if http is None:
            from kiln_client._http import AsyncHTTP
            from kiln_client._options import ClientOptions

            options = ClientOptions.resolve(
                api_key=None,
                base_url=None,
                session_token=None,
                timeout=None,
                total_timeout=None,
                max_retries=None,
                respond_async=False,
                default_headers=None,
            )
            http = AsyncHTTP(options, httpx.AsyncClient())
        try:
            async with http.download(self.url) as response:
                try:
                    async for piece in response.aiter_bytes():
                        yield piece
                except httpx.TransportError as exc:
                    raise _transport_error(exc) from exc
        finally:
            if owned:
                await http.client.aclose()

    async def iter_bytes(self, *, secret: str | None = None) -> AsyncIterator[bytes]:
        decryptor = ChunkDecryptor(self.secret_for(secret), self.job_id, self.encryption)
        async for piece in self.iter_encrypted():
            plain = decryptor.feed(piece)
            if plain:
                yield plain
        yield decryptor.finish()

    def _tries(self) -> int:
        return (self.http.options.retry.max_retries if self.http is not None else 3) + 1

    async def read(self, *, secret: str | None = None) -> bytes:
        for tries_left in range(self._tries() - 1, -1, -1):
            try:
                return b"".join([piece async for piece in self.iter_bytes(secret=secret)])
            except APIConnectionError:
                if tries_left == 0:
                    raise
        raise AssertionError("unreachable")

    async def _write(self, path: str | os.PathLike[str], pieces: AsyncIterator[bytes]) -> Path:
        target = Path(path)
        temporary = anyio.Path(target.with_name(f".{target.name}.{os.urandom(6).hex()}.part"))
        out = await anyio.open_file(temporary, "xb")
        try:
            async with out:
                async for piece in pieces:
                    await out.write(piece)
            await temporary.replace(target)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await temporary.unlink(missing_ok=True)
            raise
        return target

    async def save(self, path: str | os.PathLike[str], *, secret: str | None = None) -> Path:
        secret = self.secret_for(secret)
        for tries_left in range(self._tries() - 1, -1, -1):
            try:
                return await self._write(path, self.iter_bytes(secret=secret))
            except APIConnectionError:
                if tries_left == 0:
                    raise
        raise AssertionError("unreachable")

    async def save_encrypted(self, path: str | os.PathLike[str]) -> Path:
        for tries_left in range(self._tries() - 1, -1, -1):
            try:
                return await self._write(path, self.iter_encrypted())
            except APIConnectionError:
                if tries_left == 0:
                    raise
        raise AssertionError("unreachable")


# ------------------------------------------------------------------------------ jobs

R = TypeVar("R", bound=ResultBase)


@dataclass(frozen=True)
class JobErrorInfo:
    code: str
    message: str


@dataclass(frozen=True)
class JobBase(Generic[R]):
    """A job, as `GET /jobs/{id}` shows it."""

    id: str
    model: str
    status: str
    input: dict[str, Any]
    metadata: dict[str, Any] | None
    sandbox: bool
    created_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    queue_position: int | None
    queue_reason: str | None
    estimated_start_at: datetime | None
    progress: float
    cost: Decimal | None
    result: R | None
    error: JobErrorInfo | None
    webhook_url: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def done(self) -> bool:
        """Whether the job ended (completed, failed or canceled)."""
        return self.status in TERMINAL_STATUSES

    def progress_key(self) -> tuple[Any, ...]:
        """What a watcher reports a change of."""
        return (
            self.status,
            round(self.progress, 3),
            self.queue_position,
            self.queue_reason,
            self.estimated_start_at,
        )

    @staticmethod
    def fields(data: Mapping[str, Any], result: Any) -> dict[str, Any]:
        error = data.get("error")
        position = data.get("queue_position")
        return {
            "id": str(data.get("id", "")),
            "model": str(data.get("model", "")),
            "status": str(data.get("status", "")),
            "input": _dict(data.get("input")),
            "metadata": data.get("metadata") if isinstance(data.get("metadata"), dict) else None,
            "sandbox": bool(data.get("sandbox", False)),
            "created_at": parse_time(data.get("created_at")),
            "started_at": parse_time(data.get("started_at")),
            "completed_at": parse_time(data.get("completed_at")),
            "queue_position": position if isinstance(position, int) else None,
            "queue_reason": data.get("queue_reason"),
            "estimated_start_at": parse_time(data.get("estimated_start_at")),
            "progress": float(data.get("progress") or 0.0),
            "cost": parse_credits(data.get("cost")),
            "result": result,
            "error": (
                JobErrorInfo(str(error.get("code", "")), str(error.get("message", "")))
                if isinstance(error, Mapping)
                else None
            ),
            "webhook_url": data.get("webhook_url"),
            "raw": dict(data),
        }


@dataclass(frozen=True)
class Job(JobBase[Result]):
    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, http: SyncHTTP | None = None, secret: str | None = None
    ) -> Job:
        raw_result = data.get("result")
        result = None
        if isinstance(raw_result, Mapping):
            job_id = str(data.get("id", ""))
            result = Result.parse(job_id, raw_result, http=http, default_secret=secret)
        return cls(**cls.fields(data, result))


@dataclass(frozen=True)
class AsyncJob(JobBase[AsyncResult]):
    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, http: AsyncHTTP | None = None, secret: str | None = None
    ) -> AsyncJob:
        raw_result = data.get("result")
        result = None
        if isinstance(raw_result, Mapping):
            job_id = str(data.get("id", ""))
            result = AsyncResult.parse(job_id, raw_result, http=http, default_secret=secret)
        return cls(**cls.fields(data, result))


# ------------------------------------------------------------------------------ the rest


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    page: int
    per_page: int
    total_pages: int
    total_results: int


@dataclass(frozen=True)
class Model:
    id: str
    name: str
    kind: str
    price: Decimal | None
    content_type: str
    needs_input_image: bool
    input_schema: dict[str, Any]
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Model:
        return cls(
            id=str(data.get("id", "")),
            name=str(data.get("name", "")),
            kind=str(data.get("kind", "")),
            price=parse_credits(data.get("price")),
            content_type=str(data.get("content_type", "")),
            needs_input_image=bool(data.get("needs_input_image", False)),
            input_schema=_dict(data.get("input_schema")),
            raw=dict(data),
        )


@dataclass(frozen=True)
class Quote:
    model: str
    sandbox: bool
    price: Decimal | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Quote:
        return cls(
            str(data.get("model", "")),
            bool(data.get("sandbox")),
            parse_credits(data.get("price")),
            dict(data),
        )


@dataclass(frozen=True)
class Usage:
    balance: Decimal | None
    reserved: Decimal | None
    period_start: datetime | None
    spent_this_period: Decimal | None
    jobs: dict[str, dict[str, int]]
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Usage:
        return cls(
            balance=parse_credits(data.get("balance")),
            reserved=parse_credits(data.get("reserved")),
            period_start=parse_time(data.get("period_start")),
            spent_this_period=parse_credits(data.get("spent_this_period")),
            jobs={str(k): _dict(v) for k, v in _dict(data.get("jobs")).items()},
            raw=dict(data),
        )


@dataclass(frozen=True)
class UsageStatsRow:
    key: str
    live: dict[str, Any]
    sandbox: dict[str, Any]


@dataclass(frozen=True)
class UsageStats:
    rows: list[UsageStatsRow]
    group_by: str
    start: str
    end: str
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> UsageStats:
        rows = [
            UsageStatsRow(str(r.get("key")), _dict(r.get("live")), _dict(r.get("sandbox")))
            for r in body.get("data") or []
            if isinstance(r, Mapping)
        ]
        return cls(
            rows,
            str(body.get("group_by", "")),
            str(body.get("start", "")),
            str(body.get("end", "")),
            dict(body),
        )


@dataclass(frozen=True)
class AccountEvent:
    """One entry of the account's event feed (`GET /events`); ``id`` is its cursor."""

    id: str
    type: str
    sandbox: bool
    occurred_at: datetime | None
    data: dict[str, Any]
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def job_id(self) -> str | None:
        value = self.data.get("job_id")
        return value if isinstance(value, str) else None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AccountEvent:
        return cls(
            id=str(data.get("id", "")),
            type=str(data.get("type", "")),
            sandbox=bool(data.get("sandbox", False)),
            occurred_at=parse_time(data.get("occurred_at")),
            data=_dict(data.get("data")),
            raw=dict(data),
        )


@dataclass(frozen=True)
class WebhookEndpoint:
    id: str
    url: str
    event_types: list[str]
    description: str
    status: str
    created_at: datetime | None
    updated_at: datetime | None
    disabled_at: datetime | None
    secret: str | None
    """The `whsec_` signing secret: only in the answer that created the endpoint."""
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WebhookEndpoint:
        return cls(
            id=str(data.get("id", "")),
            url=str(data.get("url", "")),
            event_types=[str(t) for t in data.get("event_types") or []],
            description=str(data.get("description", "")),
            status=str(data.get("status", "")),
            created_at=parse_time(data.get("created_at")),
            updated_at=parse_time(data.get("updated_at")),
            disabled_at=parse_time(data.get("disabled_at")),
            secret=data.get("secret"),
            raw=dict(data),
        )


@dataclass(frozen=True)
class DeliveryAttempt:
    attempt: int
    attempted_at: datetime | None
    status_code: int | None
    latency_ms: int
    error: str | None
    outcome: str
    next_attempt_at: datetime | None


@dataclass(frozen=True)
class Delivery:
    id: str
    webhook_id: str
    endpoint_id: str | None
    url: str
    event_type: str
    job_id: str | None
    status: str
    attempts: list[DeliveryAttempt]
    next_attempt_at: datetime | None
    created_at: datetime | None
    updated_at: datetime | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Delivery:
        attempts = [
            DeliveryAttempt(
                attempt=int(a.get("attempt") or 0),
                attempted_at=parse_time(a.get("attempted_at")),
                status_code=a.get("status_code"),
                latency_ms=int(a.get("latency_ms") or 0),
                error=a.get("error"),
                outcome=str(a.get("outcome", "")),
                next_attempt_at=parse_time(a.get("next_attempt_at")),
            )
            for a in data.get("attempts") or []
            if isinstance(a, Mapping)
        ]
        return cls(
            id=str(data.get("id", "")),
            webhook_id=str(data.get("webhook_id", "")),
            endpoint_id=data.get("endpoint_id"),
            url=str(data.get("url", "")),
            event_type=str(data.get("event_type", "")),
            job_id=data.get("job_id"),
            status=str(data.get("status", "")),
            attempts=attempts,
            next_attempt_at=parse_time(data.get("next_attempt_at")),
            created_at=parse_time(data.get("created_at")),
            updated_at=parse_time(data.get("updated_at")),
            raw=dict(data),
        )


@dataclass(frozen=True)
class Redelivery:
    delivery_id: str
    webhook_id: str
    status: str
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Redelivery:
        return cls(
            str(data.get("delivery_id", "")),
            str(data.get("webhook_id", "")),
            str(data.get("status", "")),
            dict(data),
        )


@dataclass(frozen=True)
class TestEvent:
    endpoint_id: str
    test_id: str
    status: str
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TestEvent:
        return cls(
            str(data.get("endpoint_id", "")),
            str(data.get("test_id", "")),
            str(data.get("status", "")),
            dict(data),
        )


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    prefix: str
    kind: str
    sandbox: bool
    created_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    secret: str | None
    """Only in the answer that made the key (creation or rotation)."""
    rotated_from: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ApiKey:
        return cls(
            id=str(data.get("id", "")),
            name=str(data.get("name", "")),
            prefix=str(data.get("prefix", "")),
            kind=str(data.get("kind", "")),
            sandbox=bool(data.get("sandbox", False)),
            created_at=parse_time(data.get("created_at")),
            last_used_at=parse_time(data.get("last_used_at")),
            revoked_at=parse_time(data.get("revoked_at")),
            secret=data.get("secret"),
            rotated_from=data.get("rotated_from"),
            raw=dict(data),
        )


@dataclass(frozen=True)
class SessionToken:
    token: str
    expires_at: datetime | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SessionToken:
        return cls(str(data.get("token", "")), parse_time(data.get("expires_at")), dict(data))


def unwrap(body: Any) -> Any:
    """The `data` of a success envelope."""
    if isinstance(body, Mapping) and "data" in body:
        return body["data"]
    raise KilnError(f"unexpected answer (no `data`): {str(body)[:200]}")
