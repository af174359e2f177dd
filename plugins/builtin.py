"""The built-in plugin: registers reelgraph's own nodes through the same hook third parties use."""

from __future__ import annotations

from reelgraph import hookimpl
from reelgraph.nodes import basic, diffusion_nodes, model_nodes, video_nodes

BUILTIN_MODULES = (basic, model_nodes, video_nodes, diffusion_nodes)


@hookimpl
def reelgraph_register_nodes(registry):  # type: ignore[no-untyped-def]
    """Register every node declared in the built-in node modules."""
    for module in BUILTIN_MODULES:
        for obj in vars(module).values():
            if hasattr(obj, "__reelgraph_node__") and getattr(obj, "__module__", None) == module.__name__:
                registry.add(obj)
