"""Generic nodes useful in any workflow: typed constants, text formatting, seeds and ranges."""

from __future__ import annotations

import re
import string
from typing import Annotated, Any

from pydantic import Field

from reelgraph import NodeInputError, node

#: The longest text ``format_text`` produces, in characters.
MAX_TEXT_CHARS = 1_000_000


class _TextTooLong(Exception):
    """The formatted text would pass ``MAX_TEXT_CHARS``."""


class _BoundedFormatter(string.Formatter):
    """``str.format`` that counts the characters it produces, field by field, and stops past a limit.

    Each field is formatted on its own (its width is below 10,000 and its value is already in memory), so
    the text is never built beyond the limit: a template repeating ``{:9999}`` fails at the limit, not after
    building gigabytes.
    """

    def __init__(self, limit: int) -> None:
        self.left = limit

    def format_field(self, value: Any, format_spec: str) -> Any:
        text = super().format_field(value, format_spec)
        self.left -= len(text)
        if self.left < 0:
            raise _TextTooLong
        return text


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

    The result may hold at most 1,000,000 characters: a longer one is refused (``too_large``, input
    ``template``) while it is being filled, before it is built.

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
    literal = sum(len(text) for text, _, _, _ in string.Formatter().parse(template))
    formatter = _BoundedFormatter(MAX_TEXT_CHARS - literal)
    try:
        if formatter.left < 0:
            raise _TextTooLong
        return formatter.format(template, value, **named)
    except _TextTooLong:
        raise NodeInputError(f"the filled template would be longer than {MAX_TEXT_CHARS:,} characters; use a "
                             "shorter template, fewer or narrower fields", input="template", code="too_large") from None
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
