"""What commands print: JSON when stdout is not a terminal (or with --json), rich tables when
it is. Progress and notes go to stderr, so that piped output stays parseable."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from rich.console import Console
from rich.table import Table

Column = tuple[str, Callable[[Any], Any]]


def _default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"cannot serialize {type(value).__name__}")


def raw_of(item: Any) -> Any:
    return getattr(item, "raw", item)


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        return f"{value:.0%}" if 0 <= value <= 1 else f"{value:g}"
    if isinstance(value, dict | list):
        return json.dumps(value, default=_default)
    return str(value)


@dataclass
class Output:
    json_mode: bool
    out: Console
    err: Console

    @classmethod
    def detect(cls, force_json: bool | None) -> Output:
        json_mode = force_json if force_json is not None else not sys.stdout.isatty()
        return cls(json_mode, Console(soft_wrap=True), Console(stderr=True, soft_wrap=True))

    def json(self, value: Any, *, lines: bool = False) -> None:
        text = json.dumps(raw_of(value), default=_default, indent=None if lines else 2)
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def show(self, value: Any, fields: Sequence[Column] | None = None) -> None:
        """One object: JSON, or a two-column table of its fields."""
        if self.json_mode:
            self.json(value)
            return
        table = Table(show_header=False, box=None, pad_edge=False)
        table.add_column(style="bold")
        table.add_column()
        if fields is None:
            for key, item in raw_of(value).items():
                table.add_row(key, cell(item))
        else:
            for name, get in fields:
                table.add_row(name, cell(get(value)))
        self.out.print(table)

    def table(self, items: Sequence[Any], columns: Sequence[Column], *, title: str = "") -> None:
        """A list: a JSON array, or a table."""
        if self.json_mode:
            self.json([raw_of(item) for item in items])
            return
        table = Table(title=title or None)
        for name, _ in columns:
            table.add_column(name)
        for item in items:
            table.add_row(*(cell(get(item)) for _, get in columns))
        self.out.print(table)

    def note(self, text: str) -> None:
        self.err.print(text, markup=False, highlight=False)
