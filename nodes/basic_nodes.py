"""Generic nodes useful in any workflow: typed constants, text formatting, seeds and ranges."""

from __future__ import annotations

import re
import string
from typing import Annotated, Any

from pydantic import Field

from reelgraph import NodeInputError, node


@node("text", category="basic", output="value")
def text(value: str) -> str:
    """A string constant: one place to set a value that several nodes link to."""
    return value


@node("integer", category="basic", output="value")
def integer(value: int) -> int:
    """An integer constant."""
    return value


@node("number", category="basic", output="value")
def number(value: float) -> float:
    """A floating-point constant."""
    return value


@node("format_text", category="basic", output="text")
def format_text(template: str, values: dict[str, Any] | None = None, value: Any = None) -> str:
    """Fill a ``str.format`` template, e.g. ``"a {color} cube"`` with ``values={"color": "red"}``.

    Args:
        template: the template; ``{name}`` takes ``values[name]``, ``{value}`` or ``{}`` takes ``value``.
        values: named values for the template.
        value: one extra value (handy for a link), available as ``{value}`` and ``{}``.
    """
    named = dict(values or {})
    named.setdefault("value", value)
    for _, field, spec, _ in string.Formatter().parse(template):
        if field is not None and ("{" in (spec or "") or any(len(n) > 4 for n in re.findall(r"\d+", spec or ""))):
            raise NodeInputError(f"format spec {spec!r} asks for a width or precision of 10,000 or more, "
                                 "or nests a field", input="template")
        if field is not None and ("[" in field or "." in field.split("!")[0]):
            raise NodeInputError(f"field {{{field}}}: only plain names are allowed, not attributes or indexing",
                                 input="template")
    try:
        return template.format(value, **named)
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        raise NodeInputError(f"template {template!r} cannot be filled: {exc!r}", input="template") from exc


@node("seed", category="basic", output="seed")
def seed(base: Annotated[int, Field(ge=0, lt=2**63)], offset: Annotated[int, Field(ge=0)] = 0) -> int:
    """A seed derived from a base seed and an offset (e.g. a sweep index), kept in the valid range."""
    return (base + offset) % (2**63)


@node("int_range", category="basic", output="values")
def int_range(start: int = 0, stop: int = 1, step: int = 1) -> list[int]:
    """The integers ``range(start, stop, step)`` as a list, e.g. seeds for a batch (at most 100,000)."""
    if step == 0:
        raise ValueError("step must not be 0")
    count = len(range(start, stop, step))
    if count > 100_000:
        raise ValueError(f"range({start}, {stop}, {step}) has {count} values; the limit is 100,000")
    return list(range(start, stop, step))
