"""The plugin contract: pluggy hook specifications owned by the engine.

Plugins implement these with ``@reelgraph.hookimpl``; a plugin may accept any subset of a hook's
arguments. The built-in node set is registered through the very same hooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .registry import NodeRegistry

PROJECT = "reelgraph"

hookspec = pluggy.HookspecMarker(PROJECT)
#: Marks a plugin function as an implementation of a reelgraph hook.
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def reelgraph_register_nodes(registry: NodeRegistry) -> None:
    """Register node types by calling ``registry.add(fn)`` for each ``@node``-decorated function.

    :param registry: the engine's node registry; ``add`` records which plugin registered each type.

    Called once per plugin when the engine loads its plugins, before any workflow is validated.
    Return values are ignored. A plugin that raises here is reported by ``reelgraph plugins`` and
    skipped; node types it had already added are withdrawn.
    """
