"""The OpenAPI document at /openapi.json: FastAPI's, completed with what it cannot know.

- Every operation lists the error statuses it can answer, all with the `ErrorEnvelope` schema:
  what follows from its shape (a body: 400, 413, 422; parameters: 422; a path id: 404; an
  Idempotency-Key: 400, 409), from its credentials (an API key: 401, 403, 429; a session:
  401, 403; the admin token: 401), plus whatever the route declared itself with
  `responses=error_responses(...)` (402 on POST /jobs, ...). FastAPI's own 422 schema, which is
  not the shape this API answers with, is replaced.
- A job request names the catalog's models and, for each, the JSON Schema of its `input`.
- Credentials are security schemes (`apiKey`, `sessionToken`, `adminToken`: all
  `Authorization: Bearer …`) instead of a bare `authorization` header parameter.

Routes added later get the same treatment without doing anything: this runs over the
finished document, the first time it is asked for.
"""

from collections.abc import Callable, Iterator
from typing import Any

import fastapi.routing
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from kiln_gateway import deps
from kiln_gateway.errors import ERROR_DESCRIPTIONS, ErrorEnvelope
from kiln_runtime.catalog import Catalog

ENVELOPE_REF = "#/components/schemas/ErrorEnvelope"
HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")

SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "apiKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key: `sk_live_…`, or `sk_test_…` for the sandbox.",
    },
    "sessionToken": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "A session token from `POST /api/v1/auth/token` (key management).",
    },
    "adminToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "The operator's KILN_ADMIN_TOKEN.",
    },
}
# What each kind of credential can answer besides success.
SECURITY_ERRORS = {"apiKey": (401, 403, 429), "sessionToken": (401, 403), "adminToken": (401,)}
# The dependencies (in deps.py) that ask for each kind; looked up by name so that a dependency
# not written yet simply does not count.
_SECURITY_DEPENDENCIES = {
    "apiKey": ("current_caller", "rate_limited_caller"),
    "sessionToken": ("current_account_from_session", "current_session_account"),
    "adminToken": ("require_admin",),
}


def install_openapi_document(app: FastAPI) -> None:
    generate = app.openapi
    # The last document completed (held, so that a new one is never mistaken for it).
    completed: list[dict[str, Any]] = []

    def openapi() -> dict[str, Any]:
        document = generate()  # FastAPI caches it in app.openapi_schema
        if not completed or completed[-1] is not document:
            complete_document(document, _route_security(app))
            state = getattr(app.state, "gateway", None)
            if state is not None:
                describe_job_inputs(document, state.catalog)
            completed[:] = [document]
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def complete_document(document: dict[str, Any], security: dict[tuple[str, str], str]) -> None:
    """Add the error responses and security schemes to `document` (in place)."""
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    envelope = ErrorEnvelope.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(envelope.pop("$defs", {}))
    schemas["ErrorEnvelope"] = envelope
    used_schemes: set[str] = set()
    for path, method, operation in _operations(document):
        parameters = operation.get("parameters", [])
        scheme = security.get((path, method))
        if scheme is None and any(_is_authorization(p) for p in parameters):
            scheme = "apiKey"
        statuses: set[int] = set()
        if scheme is not None:
            operation["parameters"] = [p for p in parameters if not _is_authorization(p)]
            if not operation["parameters"]:
                del operation["parameters"]
            operation["security"] = [{scheme: []}]
            used_schemes.add(scheme)
            statuses.update(SECURITY_ERRORS[scheme])
        statuses.update(_shape_errors(operation))
        responses = operation.setdefault("responses", {})
        if 422 not in statuses and _fastapi_validation_error(responses.get("422")):
            del responses["422"]  # FastAPI adds it for the Authorization header alone
        for status in sorted(statuses):
            responses.setdefault(str(status), {})
        for status, response in responses.items():
            if status.isdigit() and int(status) >= 400:
                response["description"] = ERROR_DESCRIPTIONS.get(int(status), "Error.")
                response["content"] = {"application/json": {"schema": {"$ref": ENVELOPE_REF}}}
        operation["responses"] = dict(sorted(responses.items()))
    if used_schemes:
        components.setdefault("securitySchemes", {}).update(
            {name: SECURITY_SCHEMES[name] for name in sorted(used_schemes)}
        )
    # FastAPI's validation error shape is never sent: drop it once nothing refers to it.
    for name in ("HTTPValidationError", "ValidationError"):
        if name in schemas and f"#/components/schemas/{name}" not in repr(document["paths"]):
            del schemas[name]


def describe_job_inputs(document: dict[str, Any], catalog: Catalog) -> None:
    """A job's `model` is one of the catalog's, and its `input` follows that model's JSON
    Schema: say so in the job request's schema (one `oneOf` branch per model)."""
    job = document.get("components", {}).get("schemas", {}).get("JobCreate")
    if job is None or not catalog.models or "input" not in job.get("properties", {}):
        return
    properties = job["properties"]
    properties["model"] = {**properties["model"], "enum": [m.id for m in catalog.models]}
    properties["input"] = {
        "type": "object",
        "description": "The model's input, per its JSON Schema (also in `GET /models/{id}`).",
    }
    job["oneOf"] = [
        {
            "title": model.id,
            "properties": {"model": {"const": model.id}, "input": model.input_schema},
        }
        for model in catalog.models
    ]


def _shape_errors(operation: dict[str, Any]) -> set[int]:
    statuses: set[int] = set()
    parameters = operation.get("parameters", [])
    if "requestBody" in operation:
        statuses.update((400, 413, 422))
    if any(p.get("in") == "path" for p in parameters):
        statuses.add(404)
    if any(p.get("in") in ("query", "header") for p in parameters):
        statuses.add(422)
    if any(
        p.get("in") == "header" and p.get("name", "").lower() == "idempotency-key"
        for p in parameters
    ):
        statuses.update((400, 409))
    return statuses


def _fastapi_validation_error(response: dict[str, Any] | None) -> bool:
    return response is not None and "HTTPValidationError" in repr(response)


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document.get("paths", {}).items():
        for method in HTTP_METHODS:
            if method in item:
                yield path, method, item[method]


def _is_authorization(parameter: dict[str, Any]) -> bool:
    return bool(
        parameter.get("in") == "header" and parameter.get("name", "").lower() == "authorization"
    )


def _route_security(app: FastAPI) -> dict[tuple[str, str], str]:
    """(path, method) → the credential the route asks for, read from its dependencies."""
    wanted: dict[Callable[..., Any], str] = {}
    for scheme, names in _SECURITY_DEPENDENCIES.items():
        for name in names:
            dependency = getattr(deps, name, None)
            if dependency is not None:
                wanted[dependency] = scheme
    found: dict[tuple[str, str], str] = {}
    for route in _api_routes(app):
        if not route.include_in_schema:
            continue
        schemes = {wanted[call] for call in _calls(route.dependant) if call in wanted}
        # The strongest credential a route asks for names it (one kind per route today).
        chosen = next((s for s in ("adminToken", "sessionToken", "apiKey") if s in schemes), None)
        if chosen is not None:
            for method in route.methods:
                found[(route.path_format, method.lower())] = chosen
    return found


def _api_routes(app: FastAPI) -> Iterator[Any]:
    """The app's API routes with their full paths. FastAPI ≥ 0.160 keeps included routers as
    such and exposes their routes through `iter_route_contexts`; older ones flatten them."""
    iter_route_contexts = getattr(fastapi.routing, "iter_route_contexts", None)
    items = iter_route_contexts(app.routes) if iter_route_contexts else app.routes
    for item in items:
        if isinstance(getattr(item, "original_route", item), APIRoute):
            yield item


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    stack = [dependant]
    while stack:
        current = stack.pop()
        if current.call is not None:
            yield current.call
        stack.extend(current.dependencies)
