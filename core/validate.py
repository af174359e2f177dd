"""Validation: every problem in a workflow, located and coded, before anything runs.

:func:`plan_workflow` turns a parsed document into a :class:`Plan` (node types resolved, literals and
parameters validated, links type-checked, DAG built) and collects problems as it goes instead of
stopping at the first one. A plan with no problems is safe to hand to the executor.
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import dataclass, field, replace
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter, ValidationError

from .errors import NodeInputError, Problem
from .graph import build_graph, find_cycles, terminal_nodes
from .node import REQUIRED, CheckContext, InputPort, NodeType
from .paths import PathNotAllowed, Sandbox, text_form
from .registry import NodeRegistry
from .types import is_assignable, strip_annotated, type_name
from .workflow import MAX_LITERAL_DEPTH, PARAM_TYPES, Constant, Link, ParamRef, Workflow, classify_input, too_deep

if TYPE_CHECKING:
    import networkx as nx

_PARAM_ADAPTERS = {name: TypeAdapter(tp) for name, tp in PARAM_TYPES.items()}


@dataclass
class PlannedNode:
    """A node ready to run: its type, its validated literal values and its incoming links."""

    id: str
    type: NodeType
    values: dict[str, Any] = field(default_factory=dict)
    links: dict[str, Link] = field(default_factory=dict)


@dataclass
class Plan:
    """A validated workflow: nodes in document order, the DAG, the parameter values and the targets."""

    workflow: Workflow
    nodes: dict[str, PlannedNode]
    graph: nx.DiGraph
    params: dict[str, Any]
    targets: list[tuple[str, str | None]]


def _suggest(name: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    return f"{loc + ': ' if loc else ''}{err['msg']}"


def resolve_params(wf: Workflow, given: dict[str, Any], problems: list[Problem]) -> dict[str, Any]:
    """Parameter values: given overrides, else defaults, each validated against its declared type."""
    values: dict[str, Any] = {}
    for name in given:
        if name not in wf.params:
            problems.append(
                Problem("unknown_param", f"parameter {name!r} is not declared in params"
                        f"{_suggest(name, wf.params)}", input=name)
            )
    for name, spec in wf.params.items():
        if name in given:
            raw = given[name]
        elif spec.has_default:
            raw = spec.default
        elif spec.optional:
            values[name] = None  # the input it feeds checks whether it takes None
            continue
        else:
            problems.append(Problem("missing_param", f"parameter {name!r} has no default and no value was given "
                                    f"(set it with --set {name}=...)", input=name))
            continue
        if too_deep(raw):
            problems.append(Problem("invalid_value", f"parameter {name!r} nests lists and objects more than "
                                    f"{MAX_LITERAL_DEPTH} levels deep", input=name))
            continue
        try:
            values[name] = _PARAM_ADAPTERS[spec.type].validate_python(raw)
        except ValidationError as exc:
            problems.append(Problem("invalid_value", f"parameter {name!r} is declared {spec.type}: "
                                    f"{_first_error(exc)}", input=name))
    return values


def _check_value(node_id: str, port: InputPort, value: Any, what: str, problems: list[Problem],
                 sandbox: Sandbox | None) -> Any:
    if port.adapter is None:
        problems.append(Problem("invalid_value", f"input takes a {type_name(port.annotation)}, which only a link "
                                "can supply ({\"from\": \"node.output\"})", node=node_id, input=port.name))
        return REQUIRED
    if too_deep(value):
        problems.append(Problem("invalid_value", f"{what} nests lists and objects more than {MAX_LITERAL_DEPTH} "
                                "levels deep", node=node_id, input=port.name))
        return REQUIRED
    try:
        checked = port.adapter.validate_python(value)
        if port.paths is not None and sandbox is not None:
            try:
                checked = port.paths(checked, sandbox.resolve_value)
            except PathNotAllowed as exc:
                problems.append(Problem("path_not_allowed", str(exc), node=node_id, input=port.name))
                return REQUIRED
        return checked
    except ValidationError as exc:
        problems.append(Problem("invalid_value", f"{what} {_short(value)} is not a valid "
                                f"{type_name(port.annotation)}: {_first_error(exc)}", node=node_id, input=port.name))
    except Exception as exc:  # validators of user types may raise anything
        problems.append(Problem("invalid_value", f"{what} {_short(value)} rejected: {exc}",
                                node=node_id, input=port.name))
    return REQUIRED


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def plan_workflow(
    wf: Workflow,
    registry: NodeRegistry,
    params: dict[str, Any] | None = None,
    outputs: typing.Sequence[str] | None = None,
    problems: list[Problem] | None = None,
    sandbox: Sandbox | None = None,
    trust_params: bool = True,
) -> tuple[Plan, list[Problem]]:
    """Resolve and check a parsed workflow; return the plan and every problem found (empty when valid).

    With a ``sandbox``, path inputs are resolved and checked against its allowed roots; paths in the given
    ``params`` are trusted (resolved against the current folder, allowed) unless ``trust_params`` is False.
    """
    problems = [] if problems is None else problems
    given = set(params or {}) if trust_params else set()
    param_values = resolve_params(wf, dict(params or {}), problems)
    planned: dict[str, PlannedNode] = {}
    pending_links: dict[str, dict[str, Link]] = {}
    for node_id, spec in wf.nodes.items():
        nt = registry.get(spec.type)
        if nt is None:
            if spec.type in registry.conflicts:
                owners = " and ".join(registry.conflicts[spec.type])
                problems.append(Problem("node_type_conflict", f"node type {spec.type!r} is registered by both "
                                        f"{owners}; remove one of the plugins", node=node_id))
            else:
                problems.append(Problem("unknown_node_type", f"unknown node type {spec.type!r}"
                                        f"{_suggest(spec.type, (t.name for t in registry))}", node=node_id))
            continue
        pn = PlannedNode(node_id, nt)
        planned[node_id] = pn
        links: dict[str, Link] = {}
        for input_name, raw in spec.inputs.items():
            port = nt.inputs.get(input_name)
            if port is None:
                problems.append(Problem("unknown_input", f"{nt.name} has no input {input_name!r}"
                                        f"{_suggest(input_name, nt.inputs)}; inputs: {', '.join(nt.inputs) or 'none'}",
                                        node=node_id, input=input_name))
                continue
            source = classify_input(raw)
            if isinstance(source, str):
                problems.append(Problem("bad_format", source, node=node_id, input=input_name))
            elif isinstance(source, Link):
                links[input_name] = source
            elif isinstance(source, ParamRef):
                _plan_param(wf, pn, port, source, param_values, problems, sandbox, source.name in given)
            elif isinstance(source, Constant):
                value = _check_value(node_id, port, source.value, "literal", problems, sandbox)
                if value is not REQUIRED:
                    pn.values[input_name] = value
        for input_name, port in nt.inputs.items():
            if input_name not in spec.inputs and port.paths is not None and not port.required:
                value = _check_value(node_id, port, port.default, "default", problems, sandbox)
                if value is not REQUIRED:
                    pn.values[input_name] = value
            if port.required and input_name not in spec.inputs:
                problems.append(Problem("missing_input", f"required input {input_name!r} "
                                        f"({type_name(port.annotation)}) is not given", node=node_id, input=input_name))
        pending_links[node_id] = links
    for node_id, links in pending_links.items():
        for input_name, link in list(links.items()):
            if not _check_link(wf, planned, node_id, input_name, link, problems):
                del links[input_name]
    for node_id, links in pending_links.items():
        planned[node_id].links = links
    graph = build_graph(list(wf.nodes), {n: p.links for n, p in planned.items()})
    for cycle in find_cycles(graph):
        closing = next(i for o, i in graph.edges[cycle[-1], cycle[0]]["ports"])
        path = " -> ".join([*cycle, cycle[0]])
        problems.append(Problem("cycle", f"links form a cycle: {path}", node=cycle[0], input=closing))
    targets = _resolve_targets(planned, graph, outputs, problems)
    _run_checks(planned, problems)
    return Plan(wf, planned, graph, param_values, targets), problems


def _run_checks(planned: dict[str, PlannedNode], problems: list[Problem]) -> None:
    """Each node type's static ``check`` on its literal values: mistakes visible without running anything."""
    failed = {p.node for p in problems if p.node is not None}
    for node_id, pn in planned.items():
        check = pn.type.check
        if check is None or node_id in failed:
            continue

        def linked(name: str, pn: PlannedNode = pn) -> tuple[str, dict[str, Any]] | None:
            link = pn.links.get(name)
            src = planned.get(link.node) if link is not None else None
            if src is None:
                return None
            values = {n: port.default for n, port in src.type.inputs.items() if not port.required}
            return src.type.name, {**values, **src.values}

        values = {n: port.default for n, port in pn.type.inputs.items() if not port.required}
        values.update(pn.values)
        try:
            found = check(values, CheckContext(node_id, linked))
            for error in list(found or ()):
                problems.append(Problem(error.code, str(error), node=node_id, input=error.input))
        except NodeInputError as exc:
            problems.append(Problem(exc.code, str(exc), node=node_id, input=exc.input))
        except Exception as exc:  # a check must never hide the workflow's other problems
            problems.append(Problem("invalid_value", f"check of {pn.type.name} failed: {type(exc).__name__}: {exc}",
                                    node=node_id))


def _plan_param(wf: Workflow, pn: PlannedNode, port: InputPort, ref: ParamRef, values: dict[str, Any],
                problems: list[Problem], sandbox: Sandbox | None, given: bool = False) -> None:
    spec = wf.params.get(ref.name)
    if spec is None:
        problems.append(Problem("unknown_param", f"parameter {ref.name!r} is not declared in params"
                                f"{_suggest(ref.name, wf.params)}", node=pn.id, input=port.name))
        return
    declared = PARAM_TYPES[spec.type]
    if not is_assignable(declared, port.annotation) and not _literal_fits(port, declared):
        problems.append(Problem("type_mismatch", f"parameter {ref.name!r} is {spec.type} but the input takes "
                                f"{type_name(port.annotation)}", node=pn.id, input=port.name))
        return
    if ref.name in values:
        # A value the caller gave (--set, params=) is the user's intent: its paths resolve against the current
        # folder and are allowed. A default written in the workflow file stays sandboxed.
        trusted = sandbox.trusting() if given and sandbox is not None and port.paths is not None else sandbox
        value = _check_value(pn.id, port, values[ref.name], f"parameter {ref.name!r} =", problems, trusted)
        if value is not REQUIRED:
            pn.values[port.name] = value


def _literal_fits(port: InputPort, declared: Any) -> bool:
    """Literal[...] and Path inputs accept str parameters; the value check then decides."""
    annotation = strip_annotated(port.annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_literal_fits(replace(port, annotation=a), declared) for a in typing.get_args(annotation))
    if typing.get_origin(annotation) is typing.Literal:
        return all(isinstance(v, declared) for v in typing.get_args(annotation))
    return declared is str and isinstance(annotation, type) and issubclass(annotation, PurePath)


def _check_link(wf: Workflow, planned: dict[str, PlannedNode], node_id: str, input_name: str, link: Link,
                problems: list[Problem]) -> bool:
    if link.node not in wf.nodes:
        problems.append(Problem("dangling_link", f"link {link} names node {link.node!r}, which does not exist"
                                f"{_suggest(link.node, wf.nodes)}", node=node_id, input=input_name))
        return False
    src = planned.get(link.node)
    if src is None:  # its type is unknown; that node already has its own problem
        return False
    out = src.type.outputs.get(link.output)
    if out is None:
        names = ", ".join(src.type.outputs) or "none"
        problems.append(Problem("dangling_link", f"link {link}: {src.type.name} has no output {link.output!r}"
                                f"{_suggest(link.output, src.type.outputs)}; outputs: {names}",
                                node=node_id, input=input_name))
        return False
    port = planned[node_id].type.inputs[input_name]
    fits = is_assignable(out.annotation, port.annotation)
    if not fits and port.paths is not None:  # text may feed a path input; the executor resolves and checks it
        fits = is_assignable(out.annotation, text_form(port.annotation))
    if not fits:
        problems.append(Problem("type_mismatch", f"link {link} gives {type_name(out.annotation)} but the input "
                                f"takes {type_name(port.annotation)}", node=node_id, input=input_name))
        return False
    return True


def _resolve_targets(planned: dict[str, PlannedNode], graph: nx.DiGraph, outputs: typing.Sequence[str] | None,
                     problems: list[Problem]) -> list[tuple[str, str | None]]:
    if outputs is None:
        return [(n, None) for n in terminal_nodes(graph) if n in planned]
    targets: list[tuple[str, str | None]] = []
    for spec in outputs:
        node_id, _, out = spec.partition(".")
        pn = planned.get(node_id)
        if pn is None:
            problems.append(Problem("unknown_output", f"requested output {spec!r}: no such node", node=node_id or None))
        elif out and out not in pn.type.outputs:
            problems.append(Problem("unknown_output", f"requested output {spec!r}: {pn.type.name} has no output "
                                    f"{out!r}", node=node_id))
        else:
            targets.append((node_id, out or None))
    return targets
