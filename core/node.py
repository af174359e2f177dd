"""How a node type is declared: a typed Python function whose signature is its interface.

``@node("namespace.name", version=1, category="...")`` turns a function into a node type:

* each parameter is an **input** (annotation = type; default = optional; pydantic ``Field`` /
  ``Annotated[..., Field(...)]`` = constraints and description);
* the return annotation gives the **outputs**: a ``NamedTuple`` gives one output per field; any
  other type gives one output named ``result`` (or the name passed as ``output=``); ``None`` gives none;
* a parameter annotated :class:`RunContext` receives the run context instead of a graph input.

Everything is checked when the decorator runs, and each message starts with the node and field name.
The decorated function stays an ordinary callable.
"""

from __future__ import annotations

import collections.abc
import enum
import inspect
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import PurePath
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ConfigDict, PydanticSchemaGenerationError, TypeAdapter
from pydantic.fields import FieldInfo

from .context import RunContext
from .errors import NodeDefinitionError
from .paths import PathRole, PathWalker, find_path_role, path_walker

DEFAULT_OUTPUT = "result"
_TYPE_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")
_PORT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RESERVED_INPUTS = {"type", "inputs"}


class _Missing:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Missing()


#: Literals are JSON: NaN and infinities are refused unless an input's Field allows them.
_LITERAL_CONFIG = ConfigDict(allow_inf_nan=False)
_CONTAINERS = (list, tuple, dict, set, frozenset, collections.abc.Sequence, collections.abc.Mapping)


def literal_type(tp: Any) -> Any:
    """The part of a type that a JSON literal can supply, or None when only a link can.

    JSON scalars, paths, enums, pydantic models, ``Literal`` and containers of these can be written in a
    workflow; other classes (tensors, model handles) cannot. From a union only the writable members are
    kept, so ``Latents | None`` takes the literal ``null``.
    """
    origin = get_origin(tp)
    if tp is Any:
        return tp
    if origin is typing.Annotated:
        base, *meta = get_args(tp)
        inner = literal_type(base)
        return None if inner is None else typing.Annotated[(inner, *meta)]
    if origin is typing.Literal:
        return tp
    if origin in (typing.Union, types.UnionType):
        kept = [m for m in (literal_type(a) for a in get_args(tp)) if m is not None]
        return None if not kept else kept[0] if len(kept) == 1 else typing.Union[tuple(kept)]  # noqa: UP007
    if origin is not None:
        if origin in _CONTAINERS and all(literal_type(a) is not None for a in get_args(tp) if a is not Ellipsis):
            return tp
        return None
    if tp is None or tp is type(None):
        return type(None)
    if isinstance(tp, type) and issubclass(tp, (str, int, float, bool, PurePath, enum.Enum, BaseModel)):
        return tp
    if tp in _CONTAINERS:
        return tp
    return None


@dataclass(frozen=True)
class InputPort:
    """One input of a node type: its type, default (or :data:`REQUIRED`), constraints and description."""

    name: str
    annotation: Any
    default: Any
    field_info: FieldInfo | None
    description: str
    path_role: PathRole | None = None
    #: Resolves every path inside a value of this input (scalars, Optional, containers); None when it has none.
    paths: PathWalker | None = field(default=None, compare=False, repr=False)

    @property
    def required(self) -> bool:
        """Whether the workflow must give this input."""
        return self.default is REQUIRED

    @cached_property
    def adapter(self) -> TypeAdapter[Any] | None:
        """Validator for literal values, or None when the type can only arrive through a link."""
        tp = literal_type(self.annotation)
        if tp is None:
            return None
        if self.field_info is not None:
            tp = typing.Annotated[tp, self.field_info]
        try:
            return TypeAdapter(tp, config=_LITERAL_CONFIG)
        except PydanticSchemaGenerationError:
            return None

    @cached_property
    def literal_schema(self) -> dict[str, Any] | None:
        """JSON Schema of a literal value for this input, or None when it must be linked."""
        if self.adapter is None:
            return None
        try:
            return self.adapter.json_schema()
        except Exception:  # types pydantic can validate but not describe
            return None


@dataclass(frozen=True)
class OutputPort:
    """One output of a node type."""

    name: str
    annotation: Any


@dataclass
class CheckContext:
    """What a node's static ``check`` may look at: its own id and the literal values of linked nodes."""

    node_id: str
    _linked: Callable[[str], tuple[str, dict[str, Any]] | None] = field(repr=False, default=lambda name: None)

    def linked(self, input_name: str) -> tuple[str, dict[str, Any]] | None:
        """``(node type, literal values)`` of the node that ``input_name`` is linked from, or None."""
        return self._linked(input_name)


@dataclass
class NodeType:
    """A registered kind of node: name, version, ports, and the function that does the work."""

    name: str
    version: int
    category: str
    fn: Callable[..., Any]
    description: str
    inputs: dict[str, InputPort]
    outputs: dict[str, OutputPort]
    context_param: str | None = None
    side_effects: bool = False
    fingerprint: Callable[[dict[str, Any], RunContext], Any] | None = None
    check: Callable[[dict[str, Any], CheckContext], Any] | None = None
    multi_output: bool = False
    plugin: str | None = field(default=None, compare=False)
    libraries: tuple[str, ...] = ()
    _identity: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    def code_identity(self) -> dict[str, Any]:
        """What the node's results depend on besides its inputs: its code digest and library versions
        (see :mod:`reelgraph.versions`); part of every cache key. Computed once."""
        if self._identity is None:
            from .versions import KEY_FORMAT, code_digest, library_versions

            self._identity = {"format": KEY_FORMAT, "code": code_digest(self.fn),
                              "libraries": library_versions(self.libraries)}
        return self._identity

    def call(self, kwargs: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
        """Run the function and return its outputs by name."""
        if self.context_param is not None:
            kwargs = {**kwargs, self.context_param: ctx}
        value = self.fn(**kwargs)
        if self.multi_output:
            return dict(zip(self.outputs, value, strict=True))
        if not self.outputs:
            return {}
        return {next(iter(self.outputs)): value}


def _doc_parts(fn: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    """Split a docstring into its description and the per-argument lines of an ``Args:`` section."""
    doc = inspect.getdoc(fn) or ""
    args: dict[str, str] = {}
    m = re.search(r"^(Args|Inputs|Parameters):\s*$", doc, flags=re.MULTILINE)
    if m is None:
        return doc.strip(), args
    body = doc[m.end():]
    current = None
    for line in body.splitlines():
        if not line.strip():
            continue
        hit = re.match(r"^\s{2,}(\w+)(?:\s*\([^)]*\))?:\s*(.*)$", line)
        if hit and hit[1] not in args:
            current = hit[1]
            args[current] = hit[2].strip()
        elif current is not None and line.startswith(" "):
            args[current] += " " + line.strip()
        else:
            break
    return doc[: m.start()].strip(), args


def _is_namedtuple(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, tuple) and hasattr(tp, "_fields")


def _split_annotated(tp: Any) -> tuple[Any, FieldInfo | None]:
    if get_origin(tp) is typing.Annotated:
        base, *meta = get_args(tp)
        infos = [m for m in meta if isinstance(m, FieldInfo)]
        if infos:
            return base, FieldInfo.merge_field_infos(*infos)
    return tp, None


def build_node_type(
    fn: Callable[..., Any],
    name: str,
    *,
    version: int = 1,
    category: str = "misc",
    output: str = DEFAULT_OUTPUT,
    side_effects: bool = False,
    fingerprint: Callable[[dict[str, Any], RunContext], Any] | None = None,
    description: str | None = None,
    libraries: tuple[str, ...] = (),
    check: Callable[[dict[str, Any], CheckContext], Any] | None = None,
) -> NodeType:
    """Build a :class:`NodeType` from a function, checking the whole declaration (see :func:`node`)."""
    where = f"node {name!r} ({getattr(fn, '__qualname__', fn)})"
    if not _TYPE_NAME.match(name):
        raise NodeDefinitionError(f"{where}: type name must match {_TYPE_NAME.pattern}")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise NodeDefinitionError(f"{where}: version must be an int >= 1, got {version!r}")
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:
        raise NodeDefinitionError(f"{where}: cannot resolve type hints: {exc}") from exc
    doc, arg_docs = _doc_parts(fn)
    inputs: dict[str, InputPort] = {}
    context_param = None
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            raise NodeDefinitionError(f"{where}.{p.name}: *args, **kwargs and positional-only are not inputs")
        if p.name not in hints:
            raise NodeDefinitionError(f"{where}.{p.name}: missing type annotation; every input needs one")
        ann = hints[p.name]
        if ann is RunContext:
            context_param = p.name
            continue
        if p.name in _RESERVED_INPUTS or not _PORT_NAME.match(p.name):
            raise NodeDefinitionError(f"{where}.{p.name}: reserved or invalid input name")
        base, info = _split_annotated(ann)
        default: Any = REQUIRED if p.default is p.empty else p.default
        if isinstance(default, FieldInfo):
            info = FieldInfo.merge_field_infos(info, default) if info else default
            default = REQUIRED if info.is_required() else info.get_default(call_default_factory=True)
        desc = (info.description if info and info.description else None) or arg_docs.get(p.name, "")
        port = InputPort(p.name, base, default, info, desc, find_path_role(ann), path_walker(ann))
        if default is not REQUIRED and port.adapter is not None:
            try:
                port.adapter.validate_python(default)
            except Exception as exc:
                raise NodeDefinitionError(f"{where}.{p.name}: default {default!r} is not valid: {exc}") from exc
        inputs[p.name] = port
    if "return" not in hints:
        raise NodeDefinitionError(f"{where}: missing return annotation; it declares the outputs")
    ret = hints["return"]
    outputs: dict[str, OutputPort] = {}
    multi = False
    if ret is None or ret is type(None):
        pass
    elif _is_namedtuple(ret):
        multi = True
        for out_name, out_type in typing.get_type_hints(ret, include_extras=True).items():
            outputs[out_name] = OutputPort(out_name, out_type)
    else:
        if not _PORT_NAME.match(output):
            raise NodeDefinitionError(f"{where}: output name {output!r} is not an identifier")
        outputs[output] = OutputPort(output, ret)
    return NodeType(
        name=name,
        version=version,
        category=category,
        fn=fn,
        description=description if description is not None else doc,
        inputs=inputs,
        outputs=outputs,
        context_param=context_param,
        side_effects=side_effects,
        fingerprint=fingerprint,
        multi_output=multi,
        libraries=tuple(libraries),
        check=check,
    )


def node(
    name: str,
    *,
    version: int = 1,
    category: str = "misc",
    output: str = DEFAULT_OUTPUT,
    side_effects: bool = False,
    fingerprint: Callable[[dict[str, Any], RunContext], Any] | None = None,
    description: str | None = None,
    libraries: tuple[str, ...] = (),
    check: Callable[[dict[str, Any], CheckContext], Any] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare a function as a node type named ``name`` (``"namespace.name"`` or a bare name).

    Args:
        name: the type name workflows use (lowercase, dotted namespaces allowed). Public contract.
        version: bump when the node's results change for the same inputs; part of every cache key (which also
            holds a digest of the node's source package, so code edits invalidate results by themselves).
        category: a group for listings and docs ("io", "conditioning", "sampling", ...).
        output: the name of the single output when the return type is not a NamedTuple.
        side_effects: the node writes files or otherwise acts on the world; its cached result is
            reused only while every path it returned still exists, and never shared between nodes.
        fingerprint: ``fn(literal_inputs, ctx) -> JSON-able`` mixed into the cache key, for nodes whose
            result depends on more than their inputs (the size and mtime of a file they read, say).
        description: overrides the docstring as the node's documentation.
        libraries: distribution names (``"torch"``, ``"diffusers"``) whose installed versions are part of the
            cache key: results computed with another version are not reused.
        check: ``fn(values, ctx: CheckContext)`` run by ``validate`` (and before a run starts) on the node's
            literal and parameter values (paths resolved); it raises ``NodeInputError`` (or yields several) for
            mistakes it can see without running anything: a file that does not exist, an extension that cannot
            be written, a size the linked model cannot take. ``ctx.linked(input)`` gives the values of the node
            a link comes from. Keep it cheap: no model is loaded.

    The function is returned unchanged except for a ``__reelgraph_node__`` attribute holding its
    :class:`NodeType`; register it with ``registry.add(fn)`` from a plugin hook.
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.__reelgraph_node__ = build_node_type(  # type: ignore[attr-defined]
            fn,
            name,
            version=version,
            category=category,
            output=output,
            side_effects=side_effects,
            fingerprint=fingerprint,
            description=description,
            libraries=libraries,
            check=check,
        )
        return fn

    return decorate


def node_type_of(obj: Any) -> NodeType:
    """The :class:`NodeType` behind a decorated function (or a NodeType itself)."""
    if isinstance(obj, NodeType):
        return obj
    nt = getattr(obj, "__reelgraph_node__", None)
    if not isinstance(nt, NodeType):
        raise NodeDefinitionError(f"{obj!r} is not a node type; decorate it with @reelgraph.node(...)")
    return nt
