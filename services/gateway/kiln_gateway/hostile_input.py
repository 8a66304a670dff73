"""Hostile input gets a 4xx, never a 500, and a client can read it: the request body guard.
(The rules a body must follow are in `json_body.py`; job `metadata` is bounded by
`jobs/metadata.py`; dates in query parameters are ISO text, `query_dates.py`.)

`RequestBodyGuard` (pure ASGI, inside the request-id middleware) reads the body as it streams
in, before any route sees it:

- more than `max_body_bytes` → 413 PAYLOAD_TOO_LARGE, whether or not the client sent a
  Content-Length (a chunked upload stops being kept as soon as it passes the limit);
- a body whose Content-Type is missing or not JSON (`application/json`, `application/*+json`)
  → 400 BAD_REQUEST (except a web form posted to the console, `/console/…`): every body of
  this API is JSON, and a 400 names the problem where FastAPI
  would answer with a confusing 422 about the body's type (`curl -d` sends a form type unless
  told `-H 'content-type: application/json'`);
- not UTF-8, not JSON, NaN/Infinity, numbers too large to read, strings with lone surrogates
  (`"\\ud800"`), or nesting deeper than `MAX_JSON_DEPTH` → 400 BAD_REQUEST;
- a NUL character in any string or key → 422 VALIDATION_ERROR naming the field (databases
  refuse NUL in text, so letting it through would fail later, and worse);
- `%00` in the path → 404 NOT_FOUND (no id contains it), in a query parameter → 422
  VALIDATION_ERROR naming it.

The body is then replayed to the app unchanged. Field-level rules (unknown fields, types,
lengths) stay with the pydantic schemas, which answer 422 VALIDATION_ERROR.

Refusing before the body is read. Most clients (urllib, requests, httpx) send the whole body
before they read any answer. If the server answers and closes while body bytes are still
arriving, the kernel answers those bytes with a TCP reset, which can also discard the answer
before the client reads it: the client sees "connection reset" instead of the 413. Uvicorn
closes right after the answer when the request said `Connection: close` (urllib always does,
and so does HTTP/1.0); on a kept-alive connection it reads and drops the rest itself. So a
refusal made before the body's end first reads the rest of the body and throws it away, up to
`refused_body_drain_bytes` and `refused_body_drain_s`, then answers: the client finishes
sending and reads the 413. Past either bound, or when the client asked
`Expect: 100-continue` and has sent nothing yet, it answers at once with
`Connection: close` (a client that waits for `100 Continue` reads the answer instead).
"""

import asyncio
from dataclasses import dataclass
from urllib.parse import parse_qsl

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kiln_gateway.config import GatewaySettings
from kiln_gateway.content_policy import load_content_policy
from kiln_gateway.errors import error_response
from kiln_gateway.json_body import BodyRefused, check_json_body


@dataclass(frozen=True)
class DrainBounds:
    """How much of a refused request's unread body the guard reads before answering."""

    max_bytes: int
    max_s: float


@dataclass
class _BodyProgress:
    received: int = 0  # bytes of the body read so far
    complete: bool = False  # its last message was read
    disconnected: bool = False


class RequestBodyGuard:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, drain: DrainBounds) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        progress = _BodyProgress()
        try:
            _check_target(scope)
            declared = headers.get("content-length")
            if declared is not None:
                if not declared.isascii() or not declared.isdigit():
                    raise BodyRefused(400, "BAD_REQUEST", "Content-Length is not a number.")
                if int(declared) > self.max_body_bytes:
                    raise _too_large(self.max_body_bytes)
            body = await self._read_body(receive, progress)
            if progress.disconnected:
                return  # the client is gone: nobody to answer
            if body and not _console_form(scope, headers):
                check_json_body(body, headers.get("content-type"))
        except BodyRefused as refused:
            await self._refuse(scope, receive, send, refused, headers, progress)
            return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # afterwards: http.disconnect, for streaming responses

        await self.app(scope, replay, send)

    async def _read_body(self, receive: Receive, progress: _BodyProgress) -> bytes:
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                progress.disconnected = True
                return b""
            chunk = message.get("body", b"")
            progress.received += len(chunk)
            progress.complete = not message.get("more_body", False)
            if progress.received > self.max_body_bytes:
                raise _too_large(self.max_body_bytes)
            chunks.append(chunk)
            if progress.complete:
                return b"".join(chunks)

    async def _refuse(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        refused: BodyRefused,
        headers: Headers,
        progress: _BodyProgress,
    ) -> None:
        """Answer `refused` so that the client can read it (see the module's docstring)."""
        read_all = progress.complete or await self._drain(receive, headers, progress)
        if progress.disconnected:
            return
        response = error_response(
            Request(scope), refused.status, refused.code, refused.message, refused.details
        )
        if not read_all:
            # Body bytes may still be on their way: end the connection after this answer.
            response.headers["Connection"] = "close"
        await response(scope, receive, send)

    async def _drain(self, receive: Receive, headers: Headers, progress: _BodyProgress) -> bool:
        """Read and drop the rest of the body within the bounds; whether it all came."""
        if progress.received == 0 and "100-continue" in headers.get("expect", "").lower():
            return False  # asking for the body would send `100 Continue`: it has not left yet
        declared = headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > self.drain.max_bytes:
            return False  # more than the bound will come: no use reading part of it
        try:
            async with asyncio.timeout(self.drain.max_s):
                while progress.received <= self.drain.max_bytes:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        progress.disconnected = True
                        return False
                    progress.received += len(message.get("body", b""))
                    if not message.get("more_body", False):
                        progress.complete = True
                        return True
        except TimeoutError:
            pass
        return False


def _check_target(scope: Scope) -> None:
    raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8", "replace")
    if b"%00" in raw_path or b"\x00" in raw_path:
        raise BodyRefused(404, "NOT_FOUND", "Nothing exists at this path.")
    query: bytes = scope.get("query_string", b"")
    if b"%00" in query or b"\x00" in query:
        fields = [
            {"field": name.replace("\x00", "\\0"), "message": "must not contain NUL characters"}
            for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True)
            if "\x00" in name or "\x00" in value
        ]
        if fields:
            raise BodyRefused(422, "VALIDATION_ERROR", "The request has invalid fields.", fields)


def _console_form(scope: Scope, headers: Headers) -> bool:
    """A web form posted to the console (`/console/…`, kiln_gateway/console/forms.py): the
    one place a body may be something other than JSON. The size limit above still applies;
    the console reads the form and refuses what is malformed or holds NUL characters."""
    path: str = scope["path"]
    media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return path.startswith("/console/") and media_type == "application/x-www-form-urlencoded"


def _too_large(limit: int) -> BodyRefused:
    return BodyRefused(413, "PAYLOAD_TOO_LARGE", f"The request body is larger than {limit} bytes.")


def install_input_guards(app: FastAPI, settings: GatewaySettings) -> None:
    """The body guard, and the content policy compiled now so that a broken operator file
    stops the gateway at start instead of failing jobs."""
    load_content_policy(settings.content_policy_file)
    app.add_middleware(
        RequestBodyGuard,
        max_body_bytes=settings.max_body_bytes,
        drain=DrainBounds(settings.refused_body_drain_bytes, settings.refused_body_drain_s),
    )
