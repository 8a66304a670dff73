"""Console form posts: `application/x-www-form-urlencoded` bodies (the request body guard lets
them through on `/console/` paths only, within the same size limit, hostile_input.py), read with
the standard library, and checked against cross-site request forgery:

- the `csrf_token` field must equal the session's token (the sign-in form: its cookie's value);
- an `Origin` header, when the browser sends one (every POST of a current browser), must name
  this host.

SameSite=Strict already keeps the cookie off other sites' requests; the token also covers other
origins of the same site (another port on the same host).
"""

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from starlette.requests import Request

from kiln_gateway.console.errors import ConsoleError
from kiln_gateway.console.sessions import csrf_matches

FORM_TYPE = "application/x-www-form-urlencoded"
MAX_FIELDS = 200


@dataclass(frozen=True)
class Form:
    """The fields of a posted form (a name may repeat: checkboxes)."""

    pairs: tuple[tuple[str, str], ...]

    def get(self, name: str, default: str = "") -> str:
        for key, value in self.pairs:
            if key == name:
                return value
        return default

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.pairs if key == name]

    def has(self, name: str) -> bool:
        return any(key == name for key, _ in self.pairs)


async def read_form(request: Request) -> Form:
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    body = await request.body()
    if body and content_type != FORM_TYPE:
        raise ConsoleError(400, "This form must be sent as a web form.")
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FIELDS, errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConsoleError(400, "The form could not be read.") from exc
    if any("\x00" in key or "\x00" in value for key, value in pairs):
        raise ConsoleError(422, "The form has a NUL character in a field.")
    return Form(tuple(pairs))


def check_origin(request: Request) -> None:
    """A cross-origin post is refused, whatever it carries."""
    origin = request.headers.get("origin")
    if origin is None:
        return  # an older client; the token still decides
    host = request.headers.get("host", "")
    if origin == "null" or urlsplit(origin).netloc.lower() != host.lower():
        raise ConsoleError(403, "This form was sent from another site.")


def check_csrf(request: Request, form: Form, expected: str) -> None:
    check_origin(request)
    if not csrf_matches(expected, form.get("csrf_token") or None):
        raise ConsoleError(
            403, "This form has expired or did not come from the console. Reload the page."
        )
