"""JSON Schema of the workflow format, with every registered node type's inputs, for editors.

Each node type becomes one branch of ``nodes``' ``anyOf``, selected by its ``type`` constant; each
input accepts a link, a parameter reference, or (when its type can be written in JSON) a literal
matching the input's own schema.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

from .node import NodeType
from .registry import NodeRegistry
from .types import type_name
from .workflow import FORMAT_VERSION, PARAM_TYPES

SCHEMA_ID = "https://reelgraph.dev/schema/workflow-v1.json"

_LINK = {
    "type": "object",
    "properties": {"from": {"type": "string", "pattern": r"^[^.\s]+\.[A-Za-z_][A-Za-z0-9_]*$"}},
    "required": ["from"],
    "additionalProperties": False,
    "description": "the value of another node's output: 'node_id.output'",
}
_PARAM_REF = {
    "type": "object",
    "properties": {"param": {"type": "string", "minLength": 1}},
    "required": ["param"],
    "additionalProperties": False,
    "description": "the value of a workflow parameter",
}


def _hoist(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    schema = copy.deepcopy(schema)
    for name, body in schema.pop("$defs", {}).items():
        defs.setdefault(name, body)
    return schema


def node_type_schema(nt: NodeType, defs: dict[str, Any]) -> dict[str, Any]:
    """The schema of one node of type ``nt``; pydantic ``$defs`` are moved into ``defs``."""
    props: dict[str, Any] = {}
    for name, port in nt.inputs.items():
        options: list[dict[str, Any]] = [{"$ref": "#/$defs/Link"}, {"$ref": "#/$defs/ParamRef"}]
        literal = port.literal_schema
        if literal is not None:
            options.append(_hoist(literal, defs))
        entry: dict[str, Any] = {"anyOf": options, "description": (port.description or "") +
                                 f" [{type_name(port.annotation)}]"}
        if not port.required:
            with contextlib.suppress(Exception):
                entry["default"] = port.adapter.dump_python(port.default, mode="json") if port.adapter else None
        props[name] = entry
    required = [n for n, p in nt.inputs.items() if p.required]
    inputs: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        inputs["required"] = required
    return {
        "type": "object",
        "title": nt.name,
        "description": nt.description.split("\n\n")[0],
        "properties": {"type": {"const": nt.name}, "inputs": inputs, "title": {"type": "string"}},
        "required": ["type", "inputs"] if required else ["type"],
        "additionalProperties": False,
    }


def workflow_schema(registry: NodeRegistry) -> dict[str, Any]:
    """The whole JSON Schema (draft 2020-12) of a workflow document for the given registry."""
    defs: dict[str, Any] = {"Link": _LINK, "ParamRef": _PARAM_REF}
    branches = [node_type_schema(nt, defs) for nt in sorted(registry, key=lambda t: t.name)]
    param = {
        "type": "object",
        "properties": {
            "type": {"enum": list(PARAM_TYPES)},
            "default": {},
            "description": {"type": "string"},
        },
        "additionalProperties": False,
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "reelgraph workflow",
        "type": "object",
        "properties": {
            "reelgraph": {"const": FORMAT_VERSION, "description": "format version"},
            "name": {"type": "string"},
            "description": {"type": "string"},
            "params": {"type": "object", "additionalProperties": param},
            "nodes": {
                "type": "object",
                "propertyNames": {"pattern": r"^[^.\s]+$"},
                "additionalProperties": {"anyOf": branches} if branches else {"type": "object"},
            },
        },
        "required": ["reelgraph", "nodes"],
        "additionalProperties": False,
        "$defs": defs,
    }
