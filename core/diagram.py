"""Render a workflow as a diagram (Mermaid or Graphviz dot): nodes with types, edges output→input."""

from __future__ import annotations

import json
import re

from .workflow import Constant, Link, ParamRef, Workflow, classify_input

FORMATS = ("mermaid", "dot")


def _mermaid_id(node_id: str, index: int) -> str:
    safe = re.sub(r"\W", "_", node_id)
    return safe if safe == node_id and safe.isascii() else f"n{index}_{safe.encode('ascii', 'ignore').decode()}"


def _links(wf: Workflow) -> list[tuple[str, str, str, str]]:
    out = []
    for dst, spec in wf.nodes.items():
        for input_name, raw in spec.inputs.items():
            src = classify_input(raw)
            if isinstance(src, Link) and src.node in wf.nodes:
                out.append((src.node, src.output, dst, input_name))
    return out


def _params_of(spec_inputs: dict[str, object]) -> list[str]:
    return [f"{k}=${v.name}" for k, raw in spec_inputs.items() if isinstance(v := classify_input(raw), ParamRef)]


def to_mermaid(wf: Workflow) -> str:
    """A Mermaid ``flowchart LR`` of the workflow."""
    ids = {n: _mermaid_id(n, i) for i, n in enumerate(wf.nodes)}
    lines = ["flowchart LR"]
    for node_id, spec in wf.nodes.items():
        label = f"{node_id}<br/><i>{spec.type}</i>"
        params = _params_of(spec.inputs)
        if params:
            label += "<br/>" + ", ".join(params)
        lines.append(f'    {ids[node_id]}["{label.replace(chr(34), "#quot;")}"]')
    for src, out, dst, inp in _links(wf):
        lines.append(f"    {ids[src]} -->|{out} → {inp}| {ids[dst]}")
    return "\n".join(lines) + "\n"


def to_dot(wf: Workflow) -> str:
    """A Graphviz ``digraph`` of the workflow."""
    def q(text: str) -> str:
        return json.dumps(text, ensure_ascii=False)

    lines = [f"digraph {q(wf.name or 'workflow')} {{", "    rankdir=LR;", "    node [shape=box];"]
    for node_id, spec in wf.nodes.items():
        literals = [k for k, raw in spec.inputs.items() if isinstance(classify_input(raw), Constant)]
        label = f"{node_id}\\n({spec.type})"
        if literals:
            label += "\\n" + ", ".join(literals)
        lines.append(f"    {q(node_id)} [label={q(label).replace(chr(92) * 2, chr(92))}];")
    for src, out, dst, inp in _links(wf):
        lines.append(f"    {q(src)} -> {q(dst)} [label={q(f'{out} → {inp}')}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(wf: Workflow, fmt: str = "mermaid") -> str:
    """The workflow as a diagram in ``fmt`` (one of :data:`FORMATS`)."""
    if fmt == "mermaid":
        return to_mermaid(wf)
    if fmt == "dot":
        return to_dot(wf)
    raise ValueError(f"unknown diagram format {fmt!r}; choose one of {', '.join(FORMATS)}")
