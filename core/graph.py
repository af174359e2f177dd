"""The workflow as a networkx DAG: edges from links, cycles, and the subgraph the outputs need.

networkx is imported on first use, so commands that never build a graph (``nodes``, ``schema``) start fast.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import networkx as nx

from .workflow import Link


def build_graph(order: list[str], links: Mapping[str, Mapping[str, Link]]) -> nx.DiGraph:
    """A DiGraph with one vertex per node id (in document order) and an edge per link.

    Each edge ``src -> dst`` carries ``ports``: the list of ``(output, input)`` pairs it stands for.
    """
    import networkx as nx

    g = nx.DiGraph()
    for i, node_id in enumerate(order):
        g.add_node(node_id, index=i)
    for dst, inputs in links.items():
        for input_name, link in inputs.items():
            if g.has_edge(link.node, dst):
                g.edges[link.node, dst]["ports"].append((link.output, input_name))
            else:
                g.add_edge(link.node, dst, ports=[(link.output, input_name)])
    return g


def find_cycles(g: nx.DiGraph) -> list[list[str]]:
    """One cycle per strongly connected knot of the graph, each as the node ids along it."""
    import networkx as nx

    cycles = []
    for component in nx.strongly_connected_components(g):
        first = min(component, key=lambda n: g.nodes[n]["index"])
        if len(component) == 1 and not g.has_edge(first, first):
            continue
        sub = g.subgraph(component)
        edges = nx.find_cycle(sub, source=first)
        cycles.append([u for u, _ in edges])
    cycles.sort(key=lambda c: g.nodes[c[0]]["index"])
    return cycles


def terminal_nodes(g: nx.DiGraph) -> list[str]:
    """Nodes no other node consumes: what a run produces when no outputs are requested."""
    return [n for n in g.nodes if g.out_degree(n) == 0]


def execution_order(g: nx.DiGraph, targets: Iterable[str]) -> list[str]:
    """The nodes the targets need (themselves and their ancestors), in a stable topological order."""
    import networkx as nx

    needed: set[str] = set()
    for t in targets:
        if t not in needed:
            needed.add(t)
            needed |= nx.ancestors(g, t)
    sub = g.subgraph(needed)
    return list(nx.lexicographical_topological_sort(sub, key=lambda n: g.nodes[n]["index"]))
