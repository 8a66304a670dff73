"""“Try a model”: a form built from the catalog's input JSON Schema (schema_form.py) that runs a
job with one of the account's sandbox keys, chosen by the person. The console never sees nor
keeps a key's secret: the signed-in session vouches for the account, and the chosen key names
the result key the output is sealed to (decrypt it on the job's page with the key's secret).

The job goes through the API's own creation path (`create_job` of jobs/endpoints.py: the same
validation, content policy, Idempotency-Key record and group-committed write), with the form's
one-time id as its Idempotency-Key, so a form sent twice makes one job, and the key's rate
limit counts it like an API call."""

import json
import uuid
from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError
from sqlalchemy import select
from starlette.responses import RedirectResponse, Response

from kiln_gateway.console.auth import AccountForm, CurrentAccount
from kiln_gateway.console.forms import Form
from kiln_gateway.console.pages import render
from kiln_gateway.console.schema_form import FormField, form_fields, parse_input
from kiln_gateway.deps import Caller, StateDep
from kiln_gateway.errors import ApiError
from kiln_gateway.jobs.endpoints import create_job
from kiln_gateway.jobs.schemas import JobCreate, SandboxOptions
from kiln_gateway.ratelimits import limit_api_key
from kiln_gateway.state import GatewayState
from kiln_gateway.tables import ApiKey
from kiln_runtime.catalog import ModelEntry

router = APIRouter(include_in_schema=False)

OUTCOMES = ("completed", "failed", "timeout")


async def _sandbox_keys(state: GatewayState, account_id: str) -> list[ApiKey]:
    async with state.runtime.sessions() as session:
        return list(
            (
                await session.scalars(
                    select(ApiKey)
                    .where(
                        ApiKey.account_id == account_id,
                        ApiKey.sandbox.is_(True),
                        ApiKey.revoked_at.is_(None),
                    )
                    .order_by(ApiKey.created_at.desc(), ApiKey.id)
                    .limit(100)
                )
            ).all()
        )


def _entry(state: GatewayState, model_id: str) -> ModelEntry:
    return state.catalog.model(model_id) or state.catalog.models[0]


async def _form_page(
    request: Request,
    user: CurrentAccount,
    state: GatewayState,
    entry: ModelEntry,
    *,
    values: dict[str, Any] | None = None,
    errors: dict[str, str] | None = None,
    error: str = "",
    chosen_key: str = "",
    outcome: str = "completed",
    delay_s: str = "",
    status: int = 200,
) -> Response:
    fields = form_fields(entry.input_schema)
    shown = {f.name: f.shown((values or {}).get(f.name, f.default)) for f in fields}
    return render(
        request,
        "try.html",
        {
            "user": user,
            "nav": "try",
            "models": state.catalog.models,
            "entry": entry,
            "fields": fields,
            "shown": shown,
            "errors": errors or {},
            "error": error,
            "keys": await _sandbox_keys(state, user.account_id),
            "chosen_key": chosen_key,
            "outcomes": OUTCOMES,
            "outcome": outcome,
            "delay_s": delay_s,
            # One id per form shown: its Idempotency-Key.
            "submission": uuid.uuid4().hex,
        },
        status=status,
    )


@router.get("/console/try")
async def try_page(request: Request, user: CurrentAccount, state: StateDep) -> Response:
    entry = _entry(state, request.query_params.get("model", ""))
    return await _form_page(request, user, state, entry)


def _posted(form: Form, fields: list[FormField]) -> tuple[dict[str, str], set[str]]:
    posted = {f.name: form.get(f.input_name) for f in fields}
    checked = {f.name for f in fields if f.widget == "checkbox" and form.has(f.input_name)}
    return posted, checked


def _field_errors(exc: ApiError) -> dict[str, str]:
    errors: dict[str, str] = {}
    for detail in exc.details or []:
        name = str(detail.get("field", ""))
        errors[name.removeprefix("input.")] = str(detail.get("message", ""))
    return errors


@router.post("/console/try")
async def run_model(
    request: Request, user: CurrentAccount, form: AccountForm, state: StateDep
) -> Response:
    entry = _entry(state, form.get("model"))
    fields = form_fields(entry.input_schema)
    posted, checked = _posted(form, fields)
    parsed = parse_input(fields, posted, checked)
    key_id = form.get("key_id")
    outcome = form.get("outcome", "completed")
    delay_text = form.get("delay_s").strip()

    async def again(
        error: str, errors: dict[str, str] | None = None, status: int = 422
    ) -> Response:
        shown_values = {**parsed.value, **{k: v for k, v in posted.items() if k in (errors or {})}}
        return await _form_page(
            request,
            user,
            state,
            entry,
            values=shown_values,
            errors=errors,
            error=error,
            chosen_key=key_id,
            outcome=outcome,
            delay_s=delay_text,
            status=status,
        )

    key = next((k for k in await _sandbox_keys(state, user.account_id) if k.id == key_id), None)
    if key is None:
        return await again("Choose one of your sandbox keys (make one on the API keys page).")
    if parsed.errors:
        return await again("Some fields need a change.", parsed.errors)
    try:
        delay = float(delay_text) if delay_text else None
        sandbox = SandboxOptions.model_validate(
            {"outcome": outcome, **({"delay_s": delay} if delay is not None else {})}
        )
        body = JobCreate(model=entry.id, input=parsed.value, sandbox=sandbox)
    except (ValueError, ValidationError):
        return await again("The sandbox outcome or delay is not valid (a delay of 0 to 600 s).")
    caller = Caller(key=key)
    try:
        await limit_api_key(request, state.settings, state.rate_limiter, key)
        answer = await create_job(
            body,
            caller,
            state,
            idempotency_key=f"console:{form.get('submission')[:64] or uuid.uuid4().hex}",
            prefer="respond-async",
        )
    except ApiError as exc:
        return await again(exc.message, _field_errors(exc), status=exc.status)
    job = json.loads(bytes(answer.body))["data"]
    return RedirectResponse(f"/console/jobs/{job['id']}", status_code=303)
