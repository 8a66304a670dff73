"""Every request gets an id (`req_` + 32 hex digits): in `request.state.request_id`, in every
error body, and in the `X-Request-Id` header of every response."""

import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kiln_gateway.errors import error_response


class RequestIds:
    """Pure ASGI (outside every other middleware of the app): it names the request before
    anything can answer it, and stamps the header on whatever answers."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = f"req_{uuid.uuid4().hex}"
        scope.setdefault("state", {})["request_id"] = rid
        length = Headers(scope=scope).get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            response = error_response(
                Request(scope), 413, "PAYLOAD_TOO_LARGE", "The request body is too large."
            )
            await response(scope, receive, send)
            return

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["X-Request-Id"] = rid
            await send(message)

        await self.app(scope, receive, send_with_id)
