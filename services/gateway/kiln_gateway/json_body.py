"""What a request body must be: JSON sent as JSON, valid UTF-8, numbers JSON can carry, no lone
surrogates, no NUL characters, nested at most `MAX_JSON_DEPTH` deep. `check_json_body` tells
which rule a body breaks as a `BodyRefused` carrying the 4xx to answer."""

import json
import math
from collections.abc import Iterator
from typing import Any

MAX_JSON_DEPTH = 32


class BodyRefused(Exception):
    """A request refused before any route sees it, with the error it gets."""

    def __init__(
        self, status: int, code: str, message: str, details: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details


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


def _too_deep() -> BodyRefused:
    return BodyRefused(
        400, "BAD_REQUEST", f"The request body is nested deeper than {MAX_JSON_DEPTH} levels."
    )
