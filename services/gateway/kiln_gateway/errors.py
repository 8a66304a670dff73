"""The gateway's error types and the one place that maps them to the error envelope."""

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ApiError(Exception):
    status = 400
    code = "BAD_REQUEST"

    def __init__(
        self,
        message: str,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers


class BadRequest(ApiError):
    status, code = 400, "BAD_REQUEST"


class Unauthorized(ApiError):
    status, code = 401, "UNAUTHORIZED"


class InsufficientCredits(ApiError):
    status, code = 402, "INSUFFICIENT_CREDITS"


class Forbidden(ApiError):
    status, code = 403, "FORBIDDEN"


class NotFound(ApiError):
    status, code = 404, "NOT_FOUND"


class Conflict(ApiError):
    status, code = 409, "CONFLICT"


class PayloadTooLarge(ApiError):
    status, code = 413, "PAYLOAD_TOO_LARGE"


class ValidationFailed(ApiError):
    status, code = 422, "VALIDATION_ERROR"


class ContentPolicyRefused(ApiError):
    status, code = 422, "CONTENT_POLICY"


class Unavailable(ApiError):
    status, code = 503, "UNAVAILABLE"


_STATUS_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "BAD_REQUEST",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    415: "BAD_REQUEST",
    422: "VALIDATION_ERROR",
    429: "RATE_LIMITED",
    503: "UNAVAILABLE",
}


class ErrorDetail(BaseModel):
    field: str = Field(description="The field at fault, as a dotted path (`input.prompt`).")
    message: str


class ErrorBody(BaseModel):
    code: str = Field(description="A machine-readable code, e.g. `VALIDATION_ERROR`.")
    message: str = Field(description="Human text; may change, do not parse it.")
    request_id: str = Field(description="Also in the `X-Request-Id` header; quote it to support.")
    details: list[ErrorDetail] | None = None


class ErrorEnvelope(BaseModel):
    """Every error of the API: `{"error": {"code", "message", "request_id", "details"?}}`."""

    error: ErrorBody


ERROR_DESCRIPTIONS = {
    400: "`BAD_REQUEST`: malformed JSON, a body that is not JSON or not UTF-8, a bad header.",
    401: "`UNAUTHORIZED`: missing, malformed, unknown or revoked credentials.",
    402: "`INSUFFICIENT_CREDITS`: not enough credits; nothing was queued.",
    403: "`FORBIDDEN`: the account is suspended.",
    404: "`NOT_FOUND`: no such resource for this caller (another account's ids included).",
    409: (
        "`CONFLICT`: the resource exists, or an Idempotency-Key was reused with another body, "
        "or the object kept changing during the request (send it again)."
    ),
    413: "`PAYLOAD_TOO_LARGE`: the body is larger than the gateway accepts.",
    422: "`VALIDATION_ERROR` (details name each bad field) or `CONTENT_POLICY`.",
    429: "`RATE_LIMITED`: too many requests; see `Retry-After`.",
    500: "`INTERNAL_ERROR`: a bug on our side.",
    503: "`UNAVAILABLE`: a dependency is down; retry later.",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for the error statuses a route can answer, all in the envelope."""
    return {
        status: {"model": ErrorEnvelope, "description": ERROR_DESCRIPTIONS.get(status, "Error.")}
        for status in statuses
    }


def request_id(request: Request) -> str:
    rid = getattr(request.state, "request_id", None)
    if rid is None:
        rid = f"req_{uuid.uuid4().hex}"
        request.state.request_id = rid
    return str(rid)


def error_response(
    request: Request,
    status: int,
    code: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "error": {"code": code, "message": message, "request_id": request_id(request)}
    }
    if details:
        # Messages may quote the input (jsonschema's do): never echo a huge value back.
        body["error"]["details"] = [
            {k: _clip(v) if isinstance(v, str) else v for k, v in detail.items()}
            for detail in details
        ]
    return JSONResponse(body, status_code=status, headers={"X-Request-Id": request_id(request)})


def _clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        response = error_response(request, exc.status, exc.code, exc.message, exc.details)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"field": _field_path(err.get("loc", ())), "message": str(err.get("msg", ""))}
            for err in exc.errors()
        ]
        if any(err.get("type") == "json_invalid" for err in exc.errors()):
            return error_response(request, 400, "BAD_REQUEST", "Malformed JSON body.", details)
        if exc.errors() and all(tuple(err.get("loc", ()))[:1] == ("path",) for err in exc.errors()):
            # A path id that cannot exist is not there: 404, like an id that does not exist.
            return error_response(request, 404, "NOT_FOUND", "Nothing exists at this path.")
        return error_response(
            request, 422, "VALIDATION_ERROR", "The request has invalid fields.", details
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "BAD_REQUEST")
        response = error_response(request, exc.status_code, code, str(exc.detail))
        response.headers.update(exc.headers or {})  # e.g. Allow on 405
        return response

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(request, 500, "INTERNAL_ERROR", "Something went wrong on our side.")
