"""Values as short text for the reports' tables."""

from __future__ import annotations

from typing import Any

__all__ = ["format_value"]


def format_value(value: Any) -> str:
    """A config or platform value as short text for a table (lists as ``(a, b)``, floats with %g)."""
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(format_value(v) for v in value) + ")"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
