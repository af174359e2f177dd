"""The built-in plugin: registers reelgraph's own nodes through the same hook third parties use.

Every module ``reelgraph.nodes.*_nodes`` is a node module: each ``@node`` function defined in it is
registered. Node modules import no heavy library at import time, so listing nodes stays fast.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

import reelgraph.nodes
from reelgraph import NodeRegistry, hookimpl


def node_modules() -> list[ModuleType]:
    """The built-in node modules, in name order."""
    names = sorted(m.name for m in pkgutil.iter_modules(reelgraph.nodes.__path__) if m.name.endswith("_nodes"))
    return [importlib.import_module(f"reelgraph.nodes.{name}") for name in names]


#: The libraries whose versions are part of every built-in node's cache key: results computed with another
#: torch, diffusers, transformers, safetensors, PyAV or NumPy are never reused.
LIBRARIES = ("torch", "diffusers", "transformers", "safetensors", "av", "numpy", "opencv-python-headless",
             "torchmetrics")


@hookimpl
def reelgraph_register_nodes(registry: NodeRegistry) -> None:
    """Register every node declared in the built-in node modules."""
    for module in node_modules():
        for obj in vars(module).values():
            if hasattr(obj, "__reelgraph_node__") and getattr(obj, "__module__", None) == module.__name__:
                nt = registry.add(obj)
                nt.libraries = tuple(sorted({*nt.libraries, *LIBRARIES}))
