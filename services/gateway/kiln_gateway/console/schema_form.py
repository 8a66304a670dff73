"""A form from a model's input JSON Schema, and the input back from what the form posted (pure).

Each top-level property becomes one field: a string a text box (a text area when it may be
long, a URL box for `format: uri`), an `enum` a choice, an integer or number a number box with
the schema's bounds and step, a boolean a check box, anything else a JSON text area. A field
left empty is left out of the input, so the model's default applies; the gateway's validator
still decides what is valid (jobs/service.py), this only turns text into JSON types."""

import json
import math
from dataclasses import dataclass, field
from typing import Any

LONG_TEXT = 200  # a string that may be longer than this gets a text area


@dataclass(frozen=True)
class FormField:
    name: str
    label: str
    widget: str  # text | textarea | url | select | integer | number | checkbox | json
    required: bool
    description: str = ""
    default: Any = None
    options: tuple[Any, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    step: str | None = None
    min_length: int | None = None
    max_length: int | None = None
    attributes: dict[str, str] = field(default_factory=dict)

    @property
    def input_name(self) -> str:
        return f"input.{self.name}"

    @property
    def element_id(self) -> str:
        return f"input-{self.name}"

    def shown(self, value: Any) -> str:
        """A JSON value as the field shows it."""
        if value is None:
            return ""
        if self.widget == "json":
            return json.dumps(value)
        if isinstance(value, bool):
            return "on" if value else ""
        return str(value)


def _label(name: str) -> str:
    return name.replace("_", " ").strip().capitalize() or name


def _widget(prop: dict[str, Any]) -> str:
    kind = prop.get("type")
    if "enum" in prop:
        return "select"
    if kind == "string":
        if prop.get("format") == "uri":
            return "url"
        return "textarea" if int(prop.get("maxLength", 0)) > LONG_TEXT else "text"
    if kind in ("integer", "number"):
        return str(kind)
    if kind == "boolean":
        return "checkbox"
    return "json"


def _step(prop: dict[str, Any], widget: str) -> str | None:
    multiple = prop.get("multipleOf")
    if multiple is not None:
        return str(multiple)
    if widget == "integer":
        return "1"
    if widget == "number":
        return "any"
    return None


def form_fields(schema: dict[str, Any]) -> list[FormField]:
    """The fields of an object schema, required ones first, in the schema's order."""
    properties: dict[str, Any] = schema.get("properties") or {}
    required = set(schema.get("required") or [])
    fields = []
    for name, prop in properties.items():
        if not isinstance(prop, dict):
            continue
        widget = _widget(prop)
        fields.append(
            FormField(
                name=name,
                label=str(prop.get("title") or _label(name)),
                widget=widget,
                required=name in required,
                description=str(prop.get("description", "")),
                default=prop.get("default"),
                options=tuple(prop.get("enum") or ()),
                minimum=prop.get("minimum"),
                maximum=prop.get("maximum"),
                step=_step(prop, widget),
                min_length=prop.get("minLength"),
                max_length=prop.get("maxLength"),
            )
        )
    fields.sort(key=lambda f: not f.required)
    return fields


@dataclass(frozen=True)
class ParsedInput:
    value: dict[str, Any]
    errors: dict[str, str]  # field name -> what is wrong


def _number(text: str, integer: bool) -> int | float:
    if integer:
        return int(text, 10)
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(text)
    if number.is_integer() and not any(c in text for c in ".eE"):
        return int(number)
    return number


def parse_input(fields: list[FormField], posted: dict[str, str], checked: set[str]) -> ParsedInput:
    """`posted`: each field's text by name; `checked`: the names of the ticked check boxes."""
    value: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for f in fields:
        if f.widget == "checkbox":
            value[f.name] = f.name in checked
            continue
        text = posted.get(f.name, "")
        if f.widget not in ("text", "textarea"):
            text = text.strip()
        if text == "":
            if f.required:
                errors[f.name] = "is required"
            continue
        try:
            if f.widget == "select":
                matches = [o for o in f.options if str(o) == text]
                if not matches:
                    raise ValueError(text)
                value[f.name] = matches[0]
            elif f.widget in ("integer", "number"):
                value[f.name] = _number(text, f.widget == "integer")
            elif f.widget == "json":
                value[f.name] = json.loads(text)
            else:
                value[f.name] = text
        except ValueError:
            errors[f.name] = {
                "select": "is not one of the choices",
                "integer": "must be a whole number",
                "number": "must be a number",
                "json": "must be JSON",
            }.get(f.widget, "is not valid")
    return ParsedInput(value, errors)
