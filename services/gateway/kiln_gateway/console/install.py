"""`install_console(app)`: the console's routes and static files on the gateway's app, and its
errors shown as pages. Outside `/console/` nothing changes: the API's errors stay JSON."""

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from kiln_gateway.console import jobs, keys, operator, overview, signin, try_model, webhooks
from kiln_gateway.console.errors import ConsoleError, SignInRequired
from kiln_gateway.console.pages import STATIC, ConsoleStaticFiles, render, vendor_assets_missing
from kiln_gateway.errors import ApiError

log = logging.getLogger(__name__)

ROUTERS = (
    signin.router,
    overview.router,
    keys.router,
    jobs.router,
    try_model.router,
    webhooks.router,
    operator.router,
)

Handler = Callable[[Request, Any], Response | Awaitable[Response]]


def _is_console(request: Request) -> bool:
    path = request.url.path
    return path == "/console" or path.startswith("/console/")


def error_page(request: Request, status: int, message: str) -> Response:
    return render(request, "error.html", {"status": status, "message": message}, status=status)


def _console_first(api_handler: Handler, page: Callable[[Request, Any], Response]) -> Handler:
    """The API's handler for an error, except under /console/, where it is a page."""

    async def handle(request: Request, exc: Any) -> Response:
        if _is_console(request):
            return page(request, exc)
        answer = api_handler(request, exc)
        return await answer if inspect.isawaitable(answer) else answer

    return handle


def install_console(app: FastAPI) -> None:
    missing = vendor_assets_missing()
    if missing:
        log.error(
            "the console's third-party assets are missing (%s): run `make console-assets`; "
            "its pages work without them, but without charts and live updates",
            ", ".join(missing),
        )
    for router in ROUTERS:
        app.include_router(router)
    app.mount("/console/static", ConsoleStaticFiles(directory=STATIC), name="console-static")

    @app.exception_handler(ConsoleError)
    async def console_error(request: Request, exc: ConsoleError) -> Response:
        return error_page(request, exc.status, exc.message)

    @app.exception_handler(SignInRequired)
    async def sign_in_required(request: Request, exc: SignInRequired) -> Response:
        return RedirectResponse(exc.location, status_code=303)

    handlers = app.exception_handlers
    handlers[ApiError] = _console_first(
        handlers[ApiError], lambda request, exc: error_page(request, exc.status, exc.message)
    )
    handlers[StarletteHTTPException] = _console_first(
        handlers[StarletteHTTPException],
        lambda request, exc: error_page(
            request,
            exc.status_code,
            "There is no such page." if exc.status_code == 404 else str(exc.detail),
        ),
    )
    handlers[RequestValidationError] = _console_first(
        handlers[RequestValidationError],
        lambda request, exc: error_page(request, 404, "There is no such page."),
    )
