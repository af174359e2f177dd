"""Edge type compatibility: the one place that decides whether an output may feed an input.

Rules, in order: ``Any`` on either side fits; ``Annotated`` metadata is ignored; equal types fit;
a subclass fits its base; ``int`` fits ``float`` (and ``bool`` fits ``int``, as in Python); a union
output fits when every member fits; a union input accepts anything that fits one member; generic
containers (``list[int]``) fit when their origins fit and their arguments fit pairwise.
"""

from __future__ import annotations

import types
import typing
from typing import Any, get_args, get_origin

_UNION_ORIGINS = (typing.Union, types.UnionType)


def strip_annotated(tp: Any) -> Any:
    """The type inside any ``Annotated[...]`` wrappers."""
    while get_origin(tp) is typing.Annotated:
        tp = get_args(tp)[0]
    return tp


def type_name(tp: Any) -> str:
    """A short readable name for a type annotation, for messages and docs."""
    tp = strip_annotated(tp)
    if tp is Any:
        return "Any"
    if tp is type(None):
        return "None"
    origin = get_origin(tp)
    if origin in _UNION_ORIGINS:
        return " | ".join(type_name(a) for a in get_args(tp))
    if origin is typing.Literal:
        return "Literal[" + ", ".join(repr(a) for a in get_args(tp)) + "]"
    if origin is not None:
        args = ", ".join(type_name(a) for a in get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return getattr(tp, "__name__", str(tp))


def is_assignable(src: Any, dst: Any) -> bool:
    """Whether a value typed ``src`` (an output) may flow into an input typed ``dst``."""
    src, dst = strip_annotated(src), strip_annotated(dst)
    if src is Any or dst is Any or src == dst:
        return True
    s_origin, d_origin = get_origin(src), get_origin(dst)
    if s_origin in _UNION_ORIGINS:
        return all(is_assignable(a, dst) for a in get_args(src))
    if d_origin in _UNION_ORIGINS:
        return any(is_assignable(src, a) for a in get_args(dst))
    if s_origin is typing.Literal:
        return all(is_assignable(type(v), dst) for v in get_args(src))
    if d_origin is typing.Literal:
        return False
    if s_origin is not None or d_origin is not None:
        s_base, d_base = s_origin or src, d_origin or dst
        if not (isinstance(s_base, type) and isinstance(d_base, type) and issubclass(s_base, d_base)):
            return False
        s_args, d_args = get_args(src), get_args(dst)
        if not d_args or not s_args:
            return True
        if len(s_args) != len(d_args):
            return False
        return all(is_assignable(a, b) for a, b in zip(s_args, d_args, strict=True))
    if isinstance(src, type) and isinstance(dst, type):
        if issubclass(src, dst):
            return True
        return dst is float and issubclass(src, int)
    return False
