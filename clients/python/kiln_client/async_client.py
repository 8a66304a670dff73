"""`AsyncKiln`, the asynchronous twin of `Kiln` (client.py): the same methods, awaitable.

    from kiln_client import AsyncKiln

    async with AsyncKiln() as kiln:
        job = await kiln.run("kiln/prompt-to-image", {"prompt": "a lighthouse in a storm"})
        await job.result.save("lighthouse.png")

Lists and feeds are async iterators: ``async for job in kiln.jobs.list(): ...``.
"""

from __future__ import annotations

import builtins
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import date, datetime
from typing import Any

import anyio
import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from httpx_sse import EventSource, SSEError

from kiln_client import _calls as calls
from kiln_client._http import AsyncHTTP, Call
from kiln_client._options import ClientOptions
from kiln_client._watch import (
    POLL_INTERVAL_MAX,
    POLL_INTERVAL_START,
    STREAM_READ_TIMEOUT,
    Deadline,
    finished_or_raise,
)
from kiln_client.errors import (
    APIConnectionError,
    APITimeoutError,
    ServerError,
    WaitTimeout,
)
from kiln_client.models import (
    AccountEvent,
    ApiKey,
    AsyncJob,
    Delivery,
    Model,
    Page,
    Quote,
    Redelivery,
    SessionToken,
    TestEvent,
    Usage,
    UsageStats,
    WebhookEndpoint,
    unwrap,
)
from kiln_client.pagination import DEFAULT_PER_PAGE, AsyncPager, parse_page
from kiln_client.signatures import WebhookEvent, verify_webhook

__all__ = ["AsyncJobHandle", "AsyncKiln"]

OnUpdate = Callable[[AsyncJob], Awaitable[Any] | Any]


class _Resource:
    def __init__(self, kiln: AsyncKiln) -> None:
        self._kiln = kiln

    @property
    def _http(self) -> AsyncHTTP:
        return self._kiln._http

    async def _data(self, call: Call) -> Any:
        return unwrap(await self._http.json(call))

    def _job(self, data: Any) -> AsyncJob:
        return AsyncJob.from_dict(data, http=self._http, secret=self._http.options.api_key)


async def _call(on_update: OnUpdate | None, job: AsyncJob) -> None:
    if on_update is not None:
        outcome = on_update(job)
        if inspect.isawaitable(outcome):
            await outcome


class AsyncJobs(_Resource):
    async def create(
        self,
        model: str,
        input: Mapping[str, Any],
        *,
        webhook_url: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        sandbox: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        respond_async: bool | None = None,
    ) -> AsyncJob:
        body = calls.job_body(
            model, input, webhook_url=webhook_url, metadata=metadata, sandbox=sandbox
        )
        prefer = self._http.options.respond_async if respond_async is None else respond_async
        call = calls.create_job(body, idempotency_key=idempotency_key, respond_async=prefer)
        return self._job(await self._data(call))

    async def get(self, job_id: str) -> AsyncJob:
        return self._job(await self._data(calls.get_job(job_id)))

    def list(
        self,
        *,
        status: str | builtins.list[str] | None = None,
        model: str | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
        sort: str | None = None,
        per_page: int = DEFAULT_PER_PAGE,
        limit: int | None = None,
    ) -> AsyncPager[AsyncJob]:
        filters = calls.job_filters(status, model, created_after, created_before)

        async def fetch(page: int) -> Page[AsyncJob]:
            body = await self._http.json(calls.list_jobs(page, per_page, filters, sort))
            return parse_page(body, self._job)

        return AsyncPager(fetch, limit=limit)

    async def count(
        self,
        *,
        status: str | builtins.list[str] | None = None,
        model: str | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
    ) -> int:
        filters = calls.job_filters(status, model, created_after, created_before)
        return int((await self._data(calls.count_jobs(filters)))["count"])

    async def cancel(self, job_id: str) -> AsyncJob:
        return self._job(await self._data(calls.cancel_job(job_id)))

    async def quote(
        self,
        model: str,
        input: Mapping[str, Any],
        *,
        webhook_url: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Quote:
        body = calls.job_body(model, input, webhook_url=webhook_url, metadata=metadata)
        return Quote.from_dict(await self._data(calls.quote_job(body)))

    async def watch(
        self,
        job_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the twin of Kiln's API)
        first: AsyncJob | None = None,
    ) -> AsyncIterator[AsyncJob]:
        """Each change of the job until it ends: its SSE stream, polling when it drops."""
        deadline = Deadline(timeout)
        last = first
        if first is not None:
            yield first
            if first.done:
                return
        streaming = True
        while streaming:
            read = deadline.bounded(STREAM_READ_TIMEOUT)
            reopen = False
            try:
                async with self._http.stream(calls.job_events(job_id), read=read) as response:
                    async for sse in EventSource(response).aiter_sse():
                        if sse.event != "job":
                            continue
                        job = self._job(sse.json())
                        if last is None or job.progress_key() != last.progress_key():
                            last = job
                            yield job
                        if job.done:
                            return
                        if deadline.passed():
                            raise WaitTimeout(job, deadline.timeout or 0)
                        if deadline.remaining() < read:
                            reopen = True  # so that a quiet stream cannot outlast the deadline
                            break
            except (httpx.TimeoutException, APITimeoutError):
                if deadline.passed():
                    job = last or await self.get(job_id)
                    raise WaitTimeout(job, deadline.timeout or 0) from None
                streaming = False
            except (httpx.TransportError, APIConnectionError, SSEError, ServerError, ValueError):
                streaming = False
            else:
                streaming = reopen
        interval = POLL_INTERVAL_START
        while True:
            job = await self.get(job_id)
            if last is None or job.progress_key() != last.progress_key():
                last = job
                yield job
            if job.done:
                return
            if deadline.passed():
                raise WaitTimeout(job, deadline.timeout or 0)
            await anyio.sleep(deadline.bounded(interval))
            interval = min(interval * 1.5, POLL_INTERVAL_MAX)

    async def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the twin of Kiln's API)
        on_update: OnUpdate | None = None,
        cancel_on_timeout: bool = False,
        first: AsyncJob | None = None,
    ) -> AsyncJob:
        last = first
        updates = self.watch(job_id, timeout=timeout, first=first)
        try:
            async for job in updates:
                last = job
                await _call(on_update, job)
        except WaitTimeout as exc:
            if cancel_on_timeout:
                raise WaitTimeout(await self.cancel(job_id), exc.timeout) from None
            raise
        finally:
            await updates.aclose()  # type: ignore[attr-defined]
        assert last is not None
        return finished_or_raise(last)


class AsyncJobHandle:
    """A submitted job: ``await wait()``, ``cancel()``, ``refresh()``, or ``async for``."""

    def __init__(self, kiln: AsyncKiln, job: AsyncJob) -> None:
        self._kiln = kiln
        self.job = job

    @property
    def id(self) -> str:
        return self.job.id

    @property
    def status(self) -> str:
        return self.job.status

    async def refresh(self) -> AsyncJob:
        self.job = await self._kiln.jobs.get(self.id)
        return self.job

    async def cancel(self) -> AsyncJob:
        self.job = await self._kiln.jobs.cancel(self.id)
        return self.job

    async def wait(
        self,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the twin of Kiln's API)
        on_update: OnUpdate | None = None,
        cancel_on_timeout: bool = False,
    ) -> AsyncJob:
        async def track(job: AsyncJob) -> None:
            self.job = job
            await _call(on_update, job)

        try:
            return await self._kiln.jobs.wait(
                self.id,
                timeout=timeout,
                on_update=track,
                cancel_on_timeout=cancel_on_timeout,
                first=self.job,
            )
        except WaitTimeout as exc:
            self.job = exc.job  # type: ignore[assignment]
            raise

    async def __aiter__(self) -> AsyncIterator[AsyncJob]:
        async for job in self._kiln.jobs.watch(self.id, first=self.job):
            self.job = job
            yield job

    def __repr__(self) -> str:
        return f"AsyncJobHandle({self.id!r}, status={self.status!r})"


class AsyncModels(_Resource):
    async def list(self) -> builtins.list[Model]:
        return [Model.from_dict(m) for m in await self._data(calls.list_models())]

    async def get(self, model_id: str) -> Model:
        return Model.from_dict(await self._data(calls.get_model(model_id)))


class AsyncUsage(_Resource):
    async def get(self) -> Usage:
        return Usage.from_dict(await self._data(calls.get_usage()))

    async def stats(
        self,
        *,
        group_by: str = "day",
        start: date | str | None = None,
        end: date | str | None = None,
    ) -> UsageStats:
        return UsageStats.from_dict(await self._http.json(calls.usage_stats(group_by, start, end)))


class AsyncEvents(_Resource):
    async def list(
        self, *, after: str | None = None, limit: int = 100
    ) -> tuple[builtins.list[AccountEvent], str]:
        body = await self._http.json(calls.list_events(after, limit))
        events = [AccountEvent.from_dict(e) for e in unwrap(body)]
        return events, str(body.get("next") or after or "0")

    async def latest_cursor(self) -> str:
        cursor = "0"
        while True:
            events, cursor = await self.list(after=cursor, limit=500)
            if not events:
                return cursor

    async def iter(
        self,
        *,
        after: str | None = None,
        follow: bool = False,
        poll_interval: float = 1.0,
        limit: int = 100,
    ) -> AsyncIterator[AccountEvent]:
        cursor = after
        while True:
            events, cursor = await self.list(after=cursor, limit=limit)
            for event in events:
                yield event
            if len(events) < limit:
                if not follow:
                    return
                await anyio.sleep(poll_interval)


class AsyncDeliveries(_Resource):
    def list(
        self,
        *,
        job_id: str | None = None,
        endpoint_id: str | None = None,
        status: str | None = None,
        per_page: int = DEFAULT_PER_PAGE,
        limit: int | None = None,
    ) -> AsyncPager[Delivery]:
        async def fetch(page: int) -> Page[Delivery]:
            call = calls.list_deliveries(page, per_page, job_id, endpoint_id, status)
            return parse_page(await self._http.json(call), Delivery.from_dict)

        return AsyncPager(fetch, limit=limit)

    async def get(self, delivery_id: str) -> Delivery:
        return Delivery.from_dict(await self._data(calls.get_delivery(delivery_id)))

    async def redeliver(self, delivery_id: str) -> Redelivery:
        return Redelivery.from_dict(await self._data(calls.redeliver(delivery_id)))


class AsyncWebhooks(_Resource):
    def __init__(self, kiln: AsyncKiln) -> None:
        super().__init__(kiln)
        self.deliveries = AsyncDeliveries(kiln)

    async def create(
        self,
        url: str,
        *,
        event_types: builtins.list[str] | None = None,
        description: str | None = None,
    ) -> WebhookEndpoint:
        return WebhookEndpoint.from_dict(
            await self._data(calls.create_endpoint(url, event_types, description))
        )

    def list(self, *, per_page: int = DEFAULT_PER_PAGE) -> AsyncPager[WebhookEndpoint]:
        async def fetch(page: int) -> Page[WebhookEndpoint]:
            body = await self._http.json(calls.list_endpoints(page, per_page))
            return parse_page(body, WebhookEndpoint.from_dict)

        return AsyncPager(fetch)

    async def get(self, endpoint_id: str) -> WebhookEndpoint:
        return WebhookEndpoint.from_dict(await self._data(calls.get_endpoint(endpoint_id)))

    async def update(
        self,
        endpoint_id: str,
        *,
        url: str | None = None,
        event_types: builtins.list[str] | None = None,
        description: str | None = None,
    ) -> WebhookEndpoint:
        call = calls.update_endpoint(endpoint_id, url, event_types, description)
        return WebhookEndpoint.from_dict(await self._data(call))

    async def delete(self, endpoint_id: str) -> WebhookEndpoint:
        return WebhookEndpoint.from_dict(await self._data(calls.delete_endpoint(endpoint_id)))

    async def test(self, endpoint_id: str) -> TestEvent:
        return TestEvent.from_dict(await self._data(calls.test_endpoint(endpoint_id)))

    async def default_secret(self) -> str:
        return str((await self._data(calls.default_secret()))["secret"])

    async def public_key(self) -> str:
        return str((await self._data(calls.public_key()))["public_key"])

    def verify(
        self,
        body: bytes | str,
        headers: Mapping[str, str] | Any,
        *,
        secret: str | None = None,
        public_key: str | bytes | Ed25519PublicKey | None = None,
        tolerance: float = 300,
    ) -> WebhookEvent:
        """verify_webhook() (no I/O, so not awaitable); ``event.data`` parses with
        ``AsyncJob.from_dict`` for a job bound to this client (``jobs.get`` also does)."""
        return verify_webhook(
            body, headers, secret=secret, public_key=public_key, tolerance=tolerance
        )


class AsyncKeys(_Resource):
    async def create(self, name: str, *, sandbox: bool = False) -> ApiKey:
        return ApiKey.from_dict(await self._data(calls.create_key(name, sandbox)))

    def list(
        self, *, include_revoked: bool = False, per_page: int = DEFAULT_PER_PAGE
    ) -> AsyncPager[ApiKey]:
        async def fetch(page: int) -> Page[ApiKey]:
            body = await self._http.json(calls.list_keys(page, per_page, include_revoked))
            return parse_page(body, ApiKey.from_dict)

        return AsyncPager(fetch)

    async def rotate(self, key_id: str) -> ApiKey:
        return ApiKey.from_dict(await self._data(calls.rotate_key(key_id)))

    async def revoke(self, key_id: str) -> ApiKey:
        return ApiKey.from_dict(await self._data(calls.revoke_key(key_id)))


class AsyncKiln:
    """The Kiln API client for asyncio (or trio); see `Kiln` for the settings."""

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        session_token: str | None = None,
        timeout: float | None = None,
        total_timeout: float | None = None,
        max_retries: int | None = None,
        respond_async: bool = False,
        default_headers: dict[str, str] | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        options = ClientOptions.resolve(
            api_key=api_key,
            base_url=base_url,
            session_token=session_token,
            timeout=timeout,
            total_timeout=total_timeout,
            max_retries=max_retries,
            respond_async=respond_async,
            default_headers=default_headers,
        )
        self._owns_client = http_client is None
        client = http_client or httpx.AsyncClient()
        client.base_url = httpx.URL(options.base_url + "/")
        self._setup(AsyncHTTP(options, client))

    def _setup(self, http: AsyncHTTP) -> None:
        self._http = http
        self.jobs = AsyncJobs(self)
        self.models = AsyncModels(self)
        self.usage = AsyncUsage(self)
        self.events = AsyncEvents(self)
        self.webhooks = AsyncWebhooks(self)
        self.keys = AsyncKeys(self)

    @property
    def base_url(self) -> str:
        return self._http.options.base_url

    @property
    def api_key(self) -> str | None:
        return self._http.options.api_key

    @property
    def session_token(self) -> str | None:
        return self._http.options.session_token

    def with_options(
        self,
        *,
        timeout: float | None = None,
        total_timeout: float | None = None,
        max_retries: int | None = None,
        respond_async: bool | None = None,
    ) -> AsyncKiln:
        clone = object.__new__(AsyncKiln)
        clone._owns_client = False
        options = self._http.options.updated(
            timeout=timeout,
            total_timeout=total_timeout,
            max_retries=max_retries,
            respond_async=respond_async,
        )
        clone._setup(AsyncHTTP(options, self._http.client))
        return clone

    async def login(self, email: str, password: str) -> SessionToken:
        token = SessionToken.from_dict(
            (await self._http.json(calls.login(email, password)))["data"]
        )
        self._http.options = self._http.options.updated(session_token=token.token)
        return token

    async def submit(
        self,
        model: str,
        input: Mapping[str, Any],
        *,
        webhook_url: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        sandbox: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        respond_async: bool | None = None,
    ) -> AsyncJobHandle:
        job = await self.jobs.create(
            model,
            input,
            webhook_url=webhook_url,
            metadata=metadata,
            sandbox=sandbox,
            idempotency_key=idempotency_key,
            respond_async=respond_async,
        )
        return AsyncJobHandle(self, job)

    async def run(
        self,
        model: str,
        input: Mapping[str, Any],
        *,
        on_update: OnUpdate | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (the twin of Kiln's API)
        cancel_on_timeout: bool = False,
        webhook_url: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        sandbox: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        respond_async: bool | None = None,
    ) -> AsyncJob:
        deadline = Deadline(timeout)
        handle = await self.submit(
            model,
            input,
            webhook_url=webhook_url,
            metadata=metadata,
            sandbox=sandbox,
            idempotency_key=idempotency_key,
            respond_async=respond_async,
        )
        return await handle.wait(
            timeout=None if timeout is None else max(deadline.remaining(), 0.0),
            on_update=on_update,
            cancel_on_timeout=cancel_on_timeout,
        )

    def verify_webhook(
        self,
        body: bytes | str,
        headers: Mapping[str, str] | Any,
        *,
        secret: str | None = None,
        public_key: str | bytes | Ed25519PublicKey | None = None,
        tolerance: float = 300,
    ) -> WebhookEvent:
        return self.webhooks.verify(
            body, headers, secret=secret, public_key=public_key, tolerance=tolerance
        )

    async def close(self) -> None:
        if self._owns_client:
            await self._http.client.aclose()

    async def __aenter__(self) -> AsyncKiln:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncKiln(base_url={self.base_url!r})"
