"""The one error of the local stack."""

from __future__ import annotations


class StackError(RuntimeError):
    """Something the stack cannot do by itself; the message says what and where to look."""
