"""Hostile input gets a 4xx, never a 500: the request body guard. (Job `metadata` is bounded by
`jobs/metadata.py`; dates in query parameters are ISO text, `query_dates.py`.)

`RequestBodyGuard` (pure ASGI, inside the request-id middleware) reads the body as it streams
in, before any route sees it:

- more than `max_body_bytes` → 413 PAYLOAD_TOO_LARGE, whether or not the client sent a
  Content-Length (a chunked upload is cut off as soon as it passes the limit);
- a body whose Content-Type is missing or not JSON (`application/json`, `application/*+json`)
  → 400 BAD_REQUEST: every body of this API is JSON, and a 400 names the problem where FastAPI
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
"""

import json
import math
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kiln_gateway.config import GatewaySettings
from kiln_gateway.content_policy import load_content_policy
from kiln_gateway.errors import error_response

MAX_JSON_DEPTH = 32


class BodyRefused(Exception):
    def __init__(
        self, status: int, code: str, message: str, details: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details


class RequestBodyGuard:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            _check_target(scope)
            headers = Headers(scope=scope)
            declared = headers.get("content-length")
            if declared is not None:
                if not declared.isascii() or not declared.isdigit():
                    raise BodyRefused(400, "BAD_REQUEST", "Content-Length is not a number.")
                if int(declared) > self.max_body_bytes:
                    raise _too_large(self.max_body_bytes)
            body, disconnected = await self._read_body(receive)
            if disconnected:
                return  # the client is gone: nobody to answer
            if body:
                check_json_body(body, headers.get("content-type"))
        except BodyRefused as refused:
            response = error_response(
                Request(scope), refused.status, refused.code, refused.message, refused.details
            )
            await response(scope, receive, send)
            return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # afterwards: http.disconnect, for streaming responses

        await self.app(scope, replay, send)

    async def _read_body(self, receive: Receive) -> tuple[bytes, bool]:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"", True
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _too_large(self.max_body_bytes)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), False


def check_json_body(body: bytes, content_type: str | None) -> Any:
    """The parsed body, or BodyRefused saying what is wrong with it."""
    if content_type is None or not _is_json_media_type(content_type):
        raise BodyRefused(
            400,
            "BAD_REQUEST",
            "Request bodies must be JSON, sent with 'Content-Type: application/json'.",
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyRefused(400, "BAD_REQUEST", "The request body is not valid UTF-8.") from exc
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise BodyRefused(
            400,
            "BAD_REQUEST",
            "Malformed JSON body.",
            [{"field": "body", "message": f"{exc.msg} at line {exc.lineno} column {exc.colno}"}],
        ) from exc
    except RecursionError as exc:
        raise _too_deep() from exc
    except ValueError as exc:  # NaN/Infinity, a float that overflows, an int too long to read
        raise BodyRefused(
            400,
            "BAD_REQUEST",
            "The request body has a number JSON cannot carry.",
            [{"field": "body", "message": str(exc)}],
        ) from exc
    _check_json_value(value)
    return value


def _check_json_value(value: Any) -> None:
    nul_fields = []
    for path, depth, item in _walk(value):
        if depth > MAX_JSON_DEPTH:
            raise _too_deep()
        if isinstance(item, str):
            if "\x00" in item:
                nul_fields.append({"field": path, "message": "must not contain NUL characters"})
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise BodyRefused(
                    400,
                    "BAD_REQUEST",
                    "The request body has a string that is not valid Unicode "
                    "(a lone surrogate escape such as \\ud800).",
                    [{"field": path, "message": "lone surrogate"}],
                ) from exc
    if nul_fields:
        raise BodyRefused(422, "VALIDATION_ERROR", "The request has invalid fields.", nul_fields)


def _walk(value: Any) -> Iterator[tuple[str, int, Any]]:
    """(field path, depth, item) for every value and key, without recursion."""
    stack: list[tuple[str, int, Any]] = [("", 1, value)]
    while stack:
        path, depth, item = stack.pop()
        yield path or "body", depth, item
        if isinstance(item, dict):
            for key, child in item.items():
                child_path = f"{path}.{key}" if path else str(key)
                yield child_path, depth, key  # keys are checked like strings
                stack.append((child_path, depth + 1, child))
        elif isinstance(item, list):
            for index, child in enumerate(item):
                stack.append((f"{path}.{index}" if path else str(index), depth + 1, child))


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


def _is_json_media_type(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    kind, _, subtype = media_type.partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is too large for a JSON number here")
    return value


def _too_large(limit: int) -> BodyRefused:
    return BodyRefused(413, "PAYLOAD_TOO_LARGE", f"The request body is larger than {limit} bytes.")


def _too_deep() -> BodyRefused:
    return BodyRefused(
        400, "BAD_REQUEST", f"The request body is nested deeper than {MAX_JSON_DEPTH} levels."
    )


def install_input_guards(app: FastAPI, settings: GatewaySettings) -> None:
    """The body guard, and the content policy compiled now so that a broken operator file
    stops the gateway at start instead of failing jobs."""
    load_content_policy(settings.content_policy_file)
    app.add_middleware(RequestBodyGuard, max_body_bytes=settings.max_body_bytes)
