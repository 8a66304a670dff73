"""The two transports (sync and async) under every resource: authentication, retries with
one `Idempotency-Key` per call, timeouts per attempt and per call, and the error envelope.

Resources describe a request as a :class:`Call`; the transports send it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import httpx

from kiln_client._options import ClientOptions
from kiln_client._version import __version__
from kiln_client.errors import (
    APIConnectionError,
    APITimeoutError,
    MissingCredentials,
    error_for_response,
)

USER_AGENT = f"kiln-client/{__version__} httpx/{httpx.__version__}"

Auth = Literal["key", "session", "none"]


@dataclass(frozen=True)
class Call:
    """One API request, before it is sent (maybe several times)."""

    method: str
    path: str
    params: Mapping[str, Any] | None = None
    json: Any = None
    auth: Auth = "key"
    replay_safe: bool | None = None
    """Whether sending it twice is harmless; None: GETs (and quotes) yes, other POSTs no."""
    idempotency_key: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def safe(self) -> bool:
        if self.replay_safe is not None:
            return self.replay_safe
        return self.method in ("GET", "HEAD", "OPTIONS")


def new_idempotency_key() -> str:
    return f"kiln-client-{uuid.uuid4().hex}"


def _params(params: Mapping[str, Any] | None) -> dict[str, str] | None:
    if not params:
        return None
    out: dict[str, str] = {}
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, list | tuple | set | frozenset):
            out[key] = ",".join(str(v) for v in value)
        elif hasattr(value, "isoformat"):
            out[key] = value.isoformat()
        else:
            out[key] = str(value)
    return out


def _headers(options: ClientOptions, call: Call) -> dict[str, str]:
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    headers.update(dict(options.default_headers))
    if call.auth == "key":
        if not options.api_key:
            raise MissingCredentials(
                "no API key: pass api_key= or set KILN_API_KEY (sk_live_… or sk_test_…)"
            )
        headers["Authorization"] = f"Bearer {options.api_key}"
    elif call.auth == "session":
        if not options.session_token:
            raise MissingCredentials(
                "key management needs an account session: call login(email, password), "
                "pass session_token= or set KILN_SESSION_TOKEN"
            )
        headers["Authorization"] = f"Bearer {options.session_token}"
    if call.idempotency_key is not None:
        headers["Idempotency-Key"] = call.idempotency_key
    headers.update(call.headers)
    return headers


class _Attempts:
    """The retry bookkeeping of one call: which retry this is, and the call's deadline."""

    def __init__(self, options: ClientOptions) -> None:
        self.options = options
        self.retries = 0
        self.deadline = (
            None if options.total_timeout is None else time.monotonic() + options.total_timeout
        )

    def timeout(self, read: float | None = None) -> httpx.Timeout:
        per_attempt = self.options.timeout
        if self.deadline is not None:
            per_attempt = max(0.001, min(per_attempt, self.deadline - time.monotonic()))
        return httpx.Timeout(per_attempt, read=per_attempt if read is None else read)

    def next_delay(self, response: httpx.Response | None) -> float | None:
        """The wait before one more try, or None when the retries or the time are used up."""
        policy = self.options.retry
        if self.retries >= policy.max_retries:
            return None
        delay = policy.delay(self.retries + 1, response)
        if delay is None:
            return None
        if self.deadline is not None and time.monotonic() + delay >= self.deadline:
            return None
        self.retries += 1
        return delay

    def retry_response(self, call: Call, response: httpx.Response) -> float | None:
        if not self.options.retry.retry_status(response.status_code, replay_safe=call.safe):
            return None
        return self.next_delay(response)

    def retry_error(self, call: Call, error: Exception) -> float | None:
        if not self.options.retry.retry_error(error, replay_safe=call.safe):
            return None
        return self.next_delay(None)


def _connection_error(error: httpx.TransportError) -> APIConnectionError:
    request = None
    try:
        request = error.request
    except RuntimeError:
        pass
    if isinstance(error, httpx.TimeoutException):
        return APITimeoutError(f"no answer in time: {error!r}", request=request)
    return APIConnectionError(f"connection failed: {error!r}", request=request)


def _prepare(options: ClientOptions, call: Call) -> Call:
    if call.method == "POST" and call.idempotency_key is None:
        # One key for every try of this call: a retried POST is a replay, never a second act.
        return Call(
            call.method,
            call.path,
            call.params,
            call.json,
            call.auth,
            call.replay_safe,
            new_idempotency_key(),
            call.headers,
        )
    return call


class SyncHTTP:
    def __init__(self, options: ClientOptions, client: httpx.Client) -> None:
        self.options = options
        self.client = client

    def _build(self, call: Call, attempts: _Attempts, read: float | None) -> httpx.Request:
        return self.client.build_request(
            call.method,
            call.path.lstrip("/"),
            params=_params(call.params),
            json=call.json,
            headers=_headers(self.options, call),
            timeout=attempts.timeout(read),
        )

    def send(
        self, call: Call, *, stream: bool = False, read: float | None = None
    ) -> httpx.Response:
        """Send with retries; a successful response (unread when ``stream``) or a typed error."""
        call = _prepare(self.options, call)
        attempts = _Attempts(self.options)
        while True:
            request = self._build(call, attempts, read)
            try:
                response = self.client.send(request, stream=stream)
            except httpx.TransportError as exc:
                delay = attempts.retry_error(call, exc)
                if delay is None:
                    raise _connection_error(exc) from exc
                time.sleep(delay)
                continue
            if response.is_success:
                return response
            delay = attempts.retry_response(call, response)
            if delay is None:
                response.read()
                response.close()
                raise error_for_response(response)
            response.close()
            time.sleep(delay)

    def json(self, call: Call) -> Any:
        response = self.send(call)
        return response.json() if response.content else None

    @contextmanager
    def stream(self, call: Call, *, read: float) -> Iterator[httpx.Response]:
        response = self.send(call, stream=True, read=read)
        try:
            yield response
        finally:
            response.close()

    @contextmanager
    def download(self, url: str) -> Iterator[httpx.Response]:
        """GET a result URL without the API key: the signed URL is the credential, and it may
        point at another host."""
        call = Call("GET", url, auth="none", headers={"Accept": "application/octet-stream"})
        response = self.send(call, stream=True)
        try:
            yield response
        finally:
            response.close()


class AsyncHTTP:
    def __init__(self, options: ClientOptions, client: httpx.AsyncClient) -> None:
        self.options = options
        self.client = client

    def _build(self, call: Call, attempts: _Attempts, read: float | None) -> httpx.Request:
        return self.client.build_request(
            call.method,
            call.path.lstrip("/"),
            params=_params(call.params),
            json=call.json,
            headers=_headers(self.options, call),
            timeout=attempts.timeout(read),
        )

    async def send(
        self, call: Call, *, stream: bool = False, read: float | None = None
    ) -> httpx.Response:
        call = _prepare(self.options, call)
        attempts = _Attempts(self.options)
        while True:
            request = self._build(call, attempts, read)
            try:
                response = await self.client.send(request, stream=stream)
            except httpx.TransportError as exc:
                delay = attempts.retry_error(call, exc)
                if delay is None:
                    raise _connection_error(exc) from exc
                await anyio.sleep(delay)
                continue
            if response.is_success:
                return response
            delay = attempts.retry_response(call, response)
            if delay is None:
                await response.aread()
                await response.aclose()
                raise error_for_response(response)
            await response.aclose()
            await anyio.sleep(delay)

    async def json(self, call: Call) -> Any:
        response = await self.send(call)
        return response.json() if response.content else None

    @asynccontextmanager
    async def stream(self, call: Call, *, read: float) -> AsyncIterator[httpx.Response]:
        response = await self.send(call, stream=True, read=read)
        try:
            yield response
        finally:
            await response.aclose()

    @asynccontextmanager
    async def download(self, url: str) -> AsyncIterator[httpx.Response]:
        call = Call("GET", url, auth="none", headers={"Accept": "application/octet-stream"})
        response = await self.send(call, stream=True)
        try:
            yield response
        finally:
            await response.aclose()
