"""`Kiln`, the synchronous client. `AsyncKiln` (async_client.py) is its twin, method for method.

from kiln_client import Kiln

kiln = Kiln()  # KILN_API_KEY, KILN_API_URL
job = kiln.run("kiln/prompt-to-image", {"prompt": "a lighthouse in a storm"},
               on_update=lambda job: print(job.status, job.queue_position, job.progress))
job.result.save("lighthouse.png")
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import date, datetime
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from httpx_sse import EventSource, SSEError

from kiln_client import _calls as calls
from kiln_client._http import Call, SyncHTTP
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
    Delivery,
    Job,
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
from kiln_client.pagination import DEFAULT_PER_PAGE, SyncPager, parse_page
from kiln_client.signatures import WebhookEvent, verify_webhook

__all__ = ["JobHandle", "Kiln"]

OnUpdate = Callable[[Job], Any]


class _Resource:
    def __init__(self, kiln: Kiln) -> None:
        self._kiln = kiln

    @property
    def _http(self) -> SyncHTTP:
        return self._kiln._http

    def _data(self, call: Call) -> Any:
        return unwrap(self._http.json(call))

    def _job(self, data: Any) -> Job:
        return Job.from_dict(data, http=self._http, secret=self._http.options.api_key)


class Jobs(_Resource):
    def create(
        self,
        model: str,
        input: Mapping[str, Any],
        *,
        webhook_url: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        sandbox: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        respond_async: bool | None = None,
    ) -> Job:
        """`POST /jobs`: the job as created (`pending` or `queued`). A 402 raises
        InsufficientCredits. Retries reuse one Idempotency-Key (``idempotency_key`` or a
        generated one), so they never make a second job."""
        body = calls.job_body(
            model, input, webhook_url=webhook_url, metadata=metadata, sandbox=sandbox
        )
        prefer = self._http.options.respond_async if respond_async is None else respond_async
        call = calls.create_job(body, idempotency_key=idempotency_key, respond_async=prefer)
        return self._job(self._data(call))

    def get(self, job_id: str) -> Job:
        return self._job(self._data(calls.get_job(job_id)))

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
    ) -> SyncPager[Job]:
        """Every matching job, newest first unless ``sort`` says otherwise, fetched page by
        page while you iterate (``limit`` stops early)."""
        filters = calls.job_filters(status, model, created_after, created_before)

        def fetch(page: int) -> Page[Job]:
            body = self._http.json(calls.list_jobs(page, per_page, filters, sort))
            return parse_page(body, self._job)

        return SyncPager(fetch, limit=limit)

    def count(
        self,
        *,
        status: str | builtins.list[str] | None = None,
        model: str | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
    ) -> int:
        filters = calls.job_filters(status, model, created_after, created_before)
        return int(self._data(calls.count_jobs(filters))["count"])

    def cancel(self, job_id: str) -> Job:
        """Cancel and refund: `canceled` at once for a pending or queued job, `canceling` for
        a running one. A finished job raises Conflict."""
        return self._job(self._data(calls.cancel_job(job_id)))

    def quote(
        self,
        model: str,
        input: Mapping[str, Any],
        *,
        webhook_url: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Quote:
        body = calls.job_body(model, input, webhook_url=webhook_url, metadata=metadata)
        return Quote.from_dict(self._data(calls.quote_job(body)))

    def watch(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        first: Job | None = None,
    ) -> Iterator[Job]:
        """Each change of the job (status, progress, queue position, estimated start) until it
        ends, from its SSE stream; when the stream drops, by polling. Raises WaitTimeout
        (carrying the last state) when ``timeout`` seconds pass first."""
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
                with self._http.stream(calls.job_events(job_id), read=read) as response:
                    for sse in EventSource(response).iter_sse():
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
                    raise WaitTimeout(last or self.get(job_id), deadline.timeout or 0) from None
                streaming = False
            except (httpx.TransportError, APIConnectionError, SSEError, ServerError, ValueError):
                streaming = False
            else:
                streaming = reopen
        interval = POLL_INTERVAL_START
        while True:
            job = self.get(job_id)
            if last is None or job.progress_key() != last.progress_key():
                last = job
                yield job
            if job.done:
                return
            if deadline.passed():
                raise WaitTimeout(job, deadline.timeout or 0)
            time.sleep(deadline.bounded(interval))
            interval = min(interval * 1.5, POLL_INTERVAL_MAX)

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        on_update: OnUpdate | None = None,
        cancel_on_timeout: bool = False,
        first: Job | None = None,
    ) -> Job:
        """Follow the job until it ends. Returns it when completed; raises JobFailed,
        JobCanceled or WaitTimeout (each with the job) otherwise."""
        last = first
        try:
            for job in self.watch(job_id, timeout=timeout, first=first):
                last = job
                if on_update is not None:
                    on_update(job)
        except WaitTimeout as exc:
            if cancel_on_timeout:
                raise WaitTimeout(self.cancel(job_id), exc.timeout) from None
            raise
        assert last is not None
        return finished_or_raise(last)


class JobHandle:
    """A submitted job: ``wait()``, ``cancel()``, ``refresh()``, or iterate its updates."""

    def __init__(self, kiln: Kiln, job: Job) -> None:
        self._kiln = kiln
        self.job = job

    @property
    def id(self) -> str:
        return self.job.id

    @property
    def status(self) -> str:
        return self.job.status

    def refresh(self) -> Job:
        self.job = self._kiln.jobs.get(self.id)
        return self.job

    def cancel(self) -> Job:
        self.job = self._kiln.jobs.cancel(self.id)
        return self.job

    def wait(
        self,
        *,
        timeout: float | None = None,
        on_update: OnUpdate | None = None,
        cancel_on_timeout: bool = False,
    ) -> Job:
        def track(job: Job) -> None:
            self.job = job
            if on_update is not None:
                on_update(job)

        try:
            return self._kiln.jobs.wait(
                self.id,
                timeout=timeout,
                on_update=track,
                cancel_on_timeout=cancel_on_timeout,
                first=self.job,
            )
        except WaitTimeout as exc:
            self.job = exc.job  # type: ignore[assignment]
            raise

    def __iter__(self) -> Iterator[Job]:
        for job in self._kiln.jobs.watch(self.id, first=self.job):
            self.job = job
            yield job

    def __repr__(self) -> str:
        return f"JobHandle({self.id!r}, status={self.status!r})"


class Models(_Resource):
    def list(self) -> builtins.list[Model]:
        return [Model.from_dict(m) for m in self._data(calls.list_models())]

    def get(self, model_id: str) -> Model:
        return Model.from_dict(self._data(calls.get_model(model_id)))


class UsageResource(_Resource):
    def get(self) -> Usage:
        return Usage.from_dict(self._data(calls.get_usage()))

    def stats(
        self,
        *,
        group_by: str = "day",
        start: date | str | None = None,
        end: date | str | None = None,
    ) -> UsageStats:
        return UsageStats.from_dict(self._http.json(calls.usage_stats(group_by, start, end)))


class Events(_Resource):
    def list(
        self, *, after: str | None = None, limit: int = 100
    ) -> tuple[builtins.list[AccountEvent], str]:
        """One page of the feed after the cursor ``after``, and the cursor to ask with next."""
        body = self._http.json(calls.list_events(after, limit))
        events = [AccountEvent.from_dict(e) for e in unwrap(body)]
        return events, str(body.get("next") or after or "0")

    def latest_cursor(self) -> str:
        """The cursor after the newest event (to follow only what happens from now on)."""
        cursor = "0"
        while True:
            events, cursor = self.list(after=cursor, limit=500)
            if not events:
                return cursor

    def iter(
        self,
        *,
        after: str | None = None,
        follow: bool = False,
        poll_interval: float = 1.0,
        limit: int = 100,
    ) -> Iterator[AccountEvent]:
        """The account's events in order from ``after`` (the start when None). Stops at the
        end of the feed, or with ``follow`` keeps waiting for new ones."""
        cursor = after
        while True:
            events, cursor = self.list(after=cursor, limit=limit)
            yield from events
            if len(events) < limit:
                if not follow:
                    return
                time.sleep(poll_interval)


class Deliveries(_Resource):
    def list(
        self,
        *,
        job_id: str | None = None,
        endpoint_id: str | None = None,
        status: str | None = None,
        per_page: int = DEFAULT_PER_PAGE,
        limit: int | None = None,
    ) -> SyncPager[Delivery]:
        def fetch(page: int) -> Page[Delivery]:
            call = calls.list_deliveries(page, per_page, job_id, endpoint_id, status)
            return parse_page(self._http.json(call), Delivery.from_dict)

        return SyncPager(fetch, limit=limit)

    def get(self, delivery_id: str) -> Delivery:
        return Delivery.from_dict(self._data(calls.get_delivery(delivery_id)))

    def redeliver(self, delivery_id: str) -> Redelivery:
        return Redelivery.from_dict(self._data(calls.redeliver(delivery_id)))


class Webhooks(_Resource):
    def __init__(self, kiln: Kiln) -> None:
        super().__init__(kiln)
        self.deliveries = Deliveries(kiln)

    def create(
        self,
        url: str,
        *,
        event_types: builtins.list[str] | None = None,
        description: str | None = None,
    ) -> WebhookEndpoint:
        """A new endpoint; its ``secret`` is in this answer only."""
        return WebhookEndpoint.from_dict(
            self._data(calls.create_endpoint(url, event_types, description))
        )

    def list(self, *, per_page: int = DEFAULT_PER_PAGE) -> SyncPager[WebhookEndpoint]:
        def fetch(page: int) -> Page[WebhookEndpoint]:
            body = self._http.json(calls.list_endpoints(page, per_page))
            return parse_page(body, WebhookEndpoint.from_dict)

        return SyncPager(fetch)

    def get(self, endpoint_id: str) -> WebhookEndpoint:
        return WebhookEndpoint.from_dict(self._data(calls.get_endpoint(endpoint_id)))

    def update(
        self,
        endpoint_id: str,
        *,
        url: str | None = None,
        event_types: builtins.list[str] | None = None,
        description: str | None = None,
    ) -> WebhookEndpoint:
        call = calls.update_endpoint(endpoint_id, url, event_types, description)
        return WebhookEndpoint.from_dict(self._data(call))

    def delete(self, endpoint_id: str) -> WebhookEndpoint:
        return WebhookEndpoint.from_dict(self._data(calls.delete_endpoint(endpoint_id)))

    def test(self, endpoint_id: str) -> TestEvent:
        return TestEvent.from_dict(self._data(calls.test_endpoint(endpoint_id)))

    def default_secret(self) -> str:
        return str(self._data(calls.default_secret())["secret"])

    def public_key(self) -> str:
        """The platform's Ed25519 key for `v1a` signatures (base64 of 32 bytes)."""
        return str(self._data(calls.public_key())["public_key"])

    def verify(
        self,
        body: bytes | str,
        headers: Mapping[str, str] | Any,
        *,
        secret: str | None = None,
        public_key: str | bytes | Ed25519PublicKey | None = None,
        tolerance: float = 300,
    ) -> WebhookEvent:
        """verify_webhook(), with the event's job bound to this client (so that
        ``event.job.result.save(path)`` works)."""
        event = verify_webhook(
            body, headers, secret=secret, public_key=public_key, tolerance=tolerance
        )
        if event.job is None:
            return event
        return WebhookEvent(
            event.id, event.type, event.timestamp, event.data, event.raw, self._job(event.data)
        )


class Keys(_Resource):
    """API keys; these calls need an account session (``Kiln.login``)."""

    def create(self, name: str, *, sandbox: bool = False) -> ApiKey:
        return ApiKey.from_dict(self._data(calls.create_key(name, sandbox)))

    def list(
        self, *, include_revoked: bool = False, per_page: int = DEFAULT_PER_PAGE
    ) -> SyncPager[ApiKey]:
        def fetch(page: int) -> Page[ApiKey]:
            body = self._http.json(calls.list_keys(page, per_page, include_revoked))
            return parse_page(body, ApiKey.from_dict)

        return SyncPager(fetch)

    def rotate(self, key_id: str) -> ApiKey:
        return ApiKey.from_dict(self._data(calls.rotate_key(key_id)))

    def revoke(self, key_id: str) -> ApiKey:
        return ApiKey.from_dict(self._data(calls.revoke_key(key_id)))


class Kiln:
    """The Kiln API client.

    ``api_key`` / ``base_url`` default to `KILN_API_KEY` / `KILN_API_URL`. ``timeout`` bounds
    each HTTP attempt, ``total_timeout`` a whole call with its retries, ``max_retries`` the
    retries (connection errors, 408, 429, 502, 503, 504, with jittered backoff that honours
    `Retry-After`). ``with_options()`` changes them for some calls.
    """

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
        http_client: httpx.Client | None = None,
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
        client = http_client or httpx.Client()
        client.base_url = httpx.URL(options.base_url + "/")
        self._setup(SyncHTTP(options, client))

    def _setup(self, http: SyncHTTP) -> None:
        self._http = http
        self.jobs = Jobs(self)
        self.models = Models(self)
        self.usage = UsageResource(self)
        self.events = Events(self)
        self.webhooks = Webhooks(self)
        self.keys = Keys(self)

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
    ) -> Kiln:
        """A client with other settings that shares this one's connections."""
        clone = object.__new__(Kiln)
        clone._owns_client = False
        options = self._http.options.updated(
            timeout=timeout,
            total_timeout=total_timeout,
            max_retries=max_retries,
            respond_async=respond_async,
        )
        clone._setup(SyncHTTP(options, self._http.client))
        return clone

    def login(self, email: str, password: str) -> SessionToken:
        """Get an account session (for ``keys``) and use it from now on."""
        token = SessionToken.from_dict(self._http.json(calls.login(email, password))["data"])
        self._http.options = self._http.options.updated(session_token=token.token)
        return token

    def submit(
        self,
        model: str,
        input: Mapping[str, Any],
        *,
        webhook_url: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        sandbox: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        respond_async: bool | None = None,
    ) -> JobHandle:
        """Create a job and return a handle to follow it."""
        job = self.jobs.create(
            model,
            input,
            webhook_url=webhook_url,
            metadata=metadata,
            sandbox=sandbox,
            idempotency_key=idempotency_key,
            respond_async=respond_async,
        )
        return JobHandle(self, job)

    def run(
        self,
        model: str,
        input: Mapping[str, Any],
        *,
        on_update: OnUpdate | None = None,
        timeout: float | None = None,
        cancel_on_timeout: bool = False,
        webhook_url: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        sandbox: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        respond_async: bool | None = None,
    ) -> Job:
        """Submit a job, follow it (calling ``on_update`` with each change) and return it once
        completed. Raises JobFailed, JobCanceled, or WaitTimeout after ``timeout`` seconds
        (canceling the job first when ``cancel_on_timeout``)."""
        deadline = Deadline(timeout)
        handle = self.submit(
            model,
            input,
            webhook_url=webhook_url,
            metadata=metadata,
            sandbox=sandbox,
            idempotency_key=idempotency_key,
            respond_async=respond_async,
        )
        return handle.wait(
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

    def close(self) -> None:
        if self._owns_client:
            self._http.client.close()

    def __enter__(self) -> Kiln:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Kiln(base_url={self.base_url!r})"
