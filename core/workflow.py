"""The workflow file format, version 1: pydantic models for the document, its nodes, links and params.

A document is ``{"reelgraph": 1, "name", "description", "params", "nodes"}``. Each node is
``{"type": ..., "inputs": {...}}`` and each input value is one of three things:

* a **link** ``{"from": "node_id.output"}`` — the value of another node's output;
* a **parameter** ``{"param": "name"}`` — a workflow parameter, overridable at run time;
* a **literal** — any other JSON value.

Parsing is lenient at the node level so that validation can report every problem in one pass.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import Problem

FORMAT_VERSION = 1

#: Type names a workflow parameter may declare, and the Python type each stands for.
PARAM_TYPES: dict[str, Any] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "path": Path,
    "json": Any,
}

_NODE_ID = re.compile(r"^[^.\s]+$")
_LINK = re.compile(r"^(?P<node>[^.\s]+)\.(?P<output>[A-Za-z_][A-Za-z0-9_]*)$")


class ParamSpec(BaseModel):
    """A workflow parameter: its type name, an optional default, and what it is for."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["str", "int", "float", "bool", "path", "json"] = "str"
    default: Any = None
    description: str = ""

    @property
    def has_default(self) -> bool:
        """Whether the parameter declared a default other than ``null`` (see ``optional``)."""
        return "default" in self.model_fields_set and self.default is not None

    @property
    def optional(self) -> bool:
        """Whether the parameter declared ``"default": null``: when no value is given, the inputs it feeds get
        ``None`` (which only inputs that take ``None`` accept), so a workflow can leave an optional input unset."""
        return "default" in self.model_fields_set and self.default is None


class NodeSpec(BaseModel):
    """One node of the document: its type name and its raw inputs (links, params and literals)."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(min_length=1)
    inputs: dict[str, Any] = Field(default_factory=dict)
    title: str = ""


class Workflow(BaseModel):
    """A whole workflow document (format version 1)."""

    model_config = ConfigDict(extra="forbid")

    reelgraph: Literal[1] = Field(description="format version; always 1")
    name: str = ""
    description: str = ""
    params: dict[str, ParamSpec] = Field(default_factory=dict)
    nodes: dict[str, NodeSpec]

    @field_validator("reelgraph", mode="before")
    @classmethod
    def _version_is_an_int(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"format version must be the integer {FORMAT_VERSION}")
        return value


@dataclass(frozen=True)
class Link:
    """An input fed by another node's output."""

    node: str
    output: str

    def __str__(self) -> str:
        return f"{self.node}.{self.output}"


@dataclass(frozen=True)
class ParamRef:
    """An input fed by a workflow parameter."""

    name: str


@dataclass(frozen=True)
class Constant:
    """An input given as a plain JSON value."""

    value: Any


InputSource = Link | ParamRef | Constant


#: How deeply a literal value may nest lists and objects (deeper ones are refused as ``invalid_value``).
MAX_LITERAL_DEPTH = 64


def too_deep(value: Any, limit: int = MAX_LITERAL_DEPTH) -> bool:
    """Whether ``value`` nests lists/objects more than ``limit`` levels (checked without recursion)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list | tuple):
            stack.extend((v, depth + 1) for v in item)
    return False


def classify_input(value: Any) -> InputSource | str:
    """Say what kind of input a raw JSON value is; a string return is a format error message."""
    if isinstance(value, dict) and "from" in value and len(value) == 1:
        target = value["from"]
        if not isinstance(target, str):
            return f"a link's 'from' must be a string 'node.output', got {type(target).__name__}"
        m = _LINK.match(target)
        if m is None:
            return f"a link's 'from' must look like 'node_id.output_name', got {target!r}"
        return Link(m["node"], m["output"])
    if isinstance(value, dict) and "param" in value and len(value) == 1:
        name = value["param"]
        if not isinstance(name, str) or not name:
            return "a parameter reference must be {\"param\": \"name\"} with a non-empty string"
        return ParamRef(name)
    return Constant(value)


def _loc_to_place(loc: tuple[Any, ...]) -> tuple[str | None, str | None]:
    """Map a pydantic error location inside a node spec to (input name or None)."""
    if len(loc) >= 2 and loc[0] == "inputs":
        return None, str(loc[1])
    return None, None


def _describe(err: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    return f"{loc}: {err['msg']}" if loc else err["msg"]


def parse_document(doc: Any) -> tuple[Workflow | None, list[Problem]]:
    """Parse a JSON document into a :class:`Workflow`, collecting every format problem.

    Top-level fields and each node are checked separately, so one broken node does not hide
    problems in the others. Returns the workflow (with only the well-formed nodes) and the problems.
    """
    problems: list[Problem] = []
    if not isinstance(doc, dict):
        return None, [Problem("bad_format", f"a workflow must be a JSON object, got {type(doc).__name__}")]
    nodes_raw = doc.get("nodes")
    top = {k: v for k, v in doc.items() if k != "nodes"}
    top["nodes"] = {}
    try:
        wf = Workflow.model_validate(top)
    except ValidationError as exc:
        for err in exc.errors():
            loc = err["loc"]
            if len(loc) >= 2 and loc[0] == "params":
                problems.append(Problem("bad_format", _describe({**err, "loc": loc[2:]}), input=str(loc[1])))
            else:
                problems.append(Problem("bad_format", _describe(err)))
        wf = None
    if nodes_raw is None:
        problems.append(Problem("bad_format", "nodes: field required (an object of node_id -> node)"))
        return None, problems
    if not isinstance(nodes_raw, dict):
        problems.append(Problem("bad_format", f"nodes: must be an object, got {type(nodes_raw).__name__}"))
        return None, problems
    nodes: dict[str, NodeSpec] = {}
    for node_id, raw in nodes_raw.items():
        if not _NODE_ID.match(node_id):
            problems.append(
                Problem("bad_format", f"node id {node_id!r} must be non-empty, without '.' or spaces", node=node_id)
            )
            continue
        try:
            nodes[node_id] = NodeSpec.model_validate(raw)
        except ValidationError as exc:
            for err in exc.errors():
                _, input_name = _loc_to_place(err["loc"])
                problems.append(Problem("bad_format", _describe(err), node=node_id, input=input_name))
    if wf is None:
        return None, problems
    wf.nodes = nodes
    return wf, problems


def load_document(path: str | Path) -> Any:
    """Read a workflow file as JSON; a file that is not JSON raises :class:`ValueError` with the position."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except RecursionError:
        raise ValueError(f"{path}: nests lists and objects too deeply to read") from None
