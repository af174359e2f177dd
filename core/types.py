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


_MAX_CHECKED_ITEMS = 1000


def value_fits(value: Any, annotation: Any, _depth: int = 0) -> bool:
    """Whether a value is of a declared type, as far as Python can tell at run time.

    Used to check what a node returned (``bad_output``) and what a disk cache entry holds. Classes are
    checked with ``isinstance`` (``int`` fits ``float``; ``bool`` fits ``int``); unions, ``Literal`` and
    ``None`` as declared; containers by their class and, up to a thousand items and a few levels deep,
    their items. Annotations Python cannot check (type variables, forward references) always fit.
    """
    tp = strip_annotated(annotation)
    if tp is Any or tp is object:
        return True
    if tp is None or tp is type(None):
        return value is None
    origin = get_origin(tp)
    if origin in _UNION_ORIGINS:
        return any(value_fits(value, a, _depth) for a in get_args(tp))
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in get_args(tp))
    if origin is not None:
        if not isinstance(origin, type):
            return True
        if not isinstance(value, origin):
            return False
        args = get_args(tp)
        if not args or _depth >= 3:
            return True
        if isinstance(value, dict):
            key_type, item_type = (*args, Any)[:2]
            items = list(value.items())[:_MAX_CHECKED_ITEMS]
            return all(value_fits(k, key_type, _depth + 1) and value_fits(v, item_type, _depth + 1) for k, v in items)
        if isinstance(value, tuple) and origin is tuple and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(value_fits(v, a, _depth + 1) for v, a in zip(value, args,
                                                                                                   strict=True))
        if isinstance(value, list | tuple | set | frozenset):
            return all(value_fits(v, args[0], _depth + 1) for v in list(value)[:_MAX_CHECKED_ITEMS])
        return True
    if isinstance(tp, type):
        if tp is float:
            return isinstance(value, int | float)
        try:
            return isinstance(value, tp)
        except TypeError:
            return True
    return True
