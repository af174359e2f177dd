"""Node registry and plugin loading: where node types come from, and what went wrong loading them.

Plugin sources, in load order: the built-in plugin (``reelgraph.plugins.builtin``), installed packages
declaring the entry point group ``reelgraph.plugins``, then ad-hoc modules or ``.py`` files named by
``REELGRAPH_PLUGINS`` (``os.pathsep``-separated) and by ``--plugin`` / ``plugins=``. A plugin that fails
to import or register is recorded with its error and skipped; the rest keep working. When two plugins
register one node type name, neither wins: the name is recorded as a conflict naming both, and a
workflow using it fails validation with ``node_type_conflict``. A built-in node type's name cannot be taken
over: the plugin's node is ignored (recorded in ``NodeRegistry.shadowing`` and reported as a warning), and
the built-in keeps working, so shared workflows mean the same everywhere.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from . import hookspecs
from .node import NodeType, node_type_of

ENTRY_POINT_GROUP = "reelgraph.plugins"
ENV_VAR = "REELGRAPH_PLUGINS"
BUILTIN = "reelgraph.plugins.builtin"


@dataclass
class PluginInfo:
    """What one plugin contributed: its name, where it came from, its node types, or its load error."""

    name: str
    source: str
    node_types: list[str] = field(default_factory=list)
    error: str | None = None


class NodeRegistry:
    """The node types known to one engine, each remembered with the plugin that registered it."""

    def __init__(self) -> None:
        self._types: dict[str, NodeType] = {}
        self.conflicts: dict[str, list[str]] = {}
        #: Node type names a plugin tried to take from the built-in plugin: ``{name: [plugin, ...]}``.
        self.shadowing: dict[str, list[str]] = {}
        self._current: PluginInfo | None = None

    def add(self, fn: Callable[..., Any] | NodeType) -> NodeType:
        """Register a ``@node``-decorated function (or a :class:`NodeType`) under its type name."""
        nt = node_type_of(fn)
        owner = self._current.name if self._current else "<direct>"
        existing = self._types.get(nt.name)
        if existing is not None and existing.plugin == "builtin" and owner != "builtin" and existing.fn is not nt.fn:
            # Built-in names are the language every shared workflow speaks: a plugin cannot take one over.
            self.shadowing.setdefault(nt.name, []).append(owner)
            return nt
        if nt.name in self.conflicts:
            self.conflicts[nt.name].append(owner)
        elif existing is not None and existing.fn is not nt.fn:
            self.conflicts[nt.name] = [existing.plugin or "<direct>", owner]
            del self._types[nt.name]
        else:
            nt.plugin = owner
            self._types[nt.name] = nt
        if self._current is not None:
            self._current.node_types.append(nt.name)
        return nt

    def get(self, name: str) -> NodeType | None:
        """The node type called ``name``, or None when unknown or in conflict."""
        return self._types.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def __iter__(self) -> Any:
        return iter(sorted(self._types.values(), key=lambda nt: (nt.category, nt.name)))

    def __len__(self) -> int:
        return len(self._types)

    def snapshot(self) -> tuple[dict[str, NodeType], dict[str, list[str]]]:
        """The registry's state, to restore when a plugin fails halfway through registering."""
        return dict(self._types), {k: list(v) for k, v in self.conflicts.items()}

    def restore(self, state: tuple[dict[str, NodeType], dict[str, list[str]]], info: PluginInfo) -> None:
        """Undo everything a failed plugin registered (its node types and the conflicts it caused)."""
        self._types, self.conflicts = dict(state[0]), {k: list(v) for k, v in state[1].items()}
        self.shadowing = {k: [o for o in v if o != info.name] for k, v in self.shadowing.items()}
        self.shadowing = {k: v for k, v in self.shadowing.items() if v}
        info.node_types.clear()


def _import_path(spec: str) -> ModuleType:
    """Import a plugin given as a ``.py`` file path or a dotted module name."""
    if spec.endswith(".py") or os.sep in spec or "/" in spec:
        path = Path(spec).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"plugin file not found: {path}")
        digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
        mod_name = f"reelgraph_plugin_{path.stem}_{digest}"
        if mod_name in sys.modules:
            return sys.modules[mod_name]
        module_spec = importlib.util.spec_from_file_location(mod_name, path)
        if module_spec is None or module_spec.loader is None:
            raise ImportError(f"cannot import plugin file {path}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[mod_name] = module
        try:
            module_spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[mod_name]
            raise
        return module
    return importlib.import_module(spec)


def _short_error(exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" (at {Path(last[0].filename).name}:{last[0].lineno})" if last else ""
    return f"{type(exc).__name__}: {exc}{where}"


class PluginSet:
    """Loads plugins into a pluggy manager and registers their node types into one registry."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.registry = NodeRegistry()
        self.plugins: list[PluginInfo] = []

    def load(
        self,
        extra: Iterable[str | ModuleType | object] = (),
        *,
        builtin: bool = True,
        entry_points_group: str | None = ENTRY_POINT_GROUP,
        env: bool = True,
    ) -> PluginSet:
        """Load every plugin source (see module doc) and return self."""
        if builtin:
            self._load_one("builtin", BUILTIN, lambda: importlib.import_module(BUILTIN))
        if entry_points_group:
            for ep in sorted(entry_points(group=entry_points_group), key=lambda e: e.name):
                dist = getattr(ep.dist, "name", None) or "?"
                self._load_one(ep.name, f"entry point {ep.value} ({dist})", ep.load)
        specs: list[str | ModuleType | object] = []
        if env and os.environ.get(ENV_VAR):
            specs += [s for s in os.environ[ENV_VAR].split(os.pathsep) if s.strip()]
        specs += list(extra)
        for spec in specs:
            if isinstance(spec, str):
                self._load_one(spec, spec, lambda s=spec: _import_path(s))
            else:
                name = getattr(spec, "__name__", type(spec).__name__)
                self._load_one(name, "object", lambda s=spec: s)
        return self

    def _load_one(self, name: str, source: str, loader: Callable[[], object]) -> None:
        if any(p.name == name for p in self.plugins):
            return
        info = PluginInfo(name=name, source=source)
        self.plugins.append(info)
        try:
            plugin = loader()
            self.pm.register(plugin, name=name)
            self.pm.check_pending()
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            info.error = _short_error(exc)
            if self.pm.get_plugin(name) is not None:
                self.pm.unregister(name=name)
            return
        self.registry._current = info
        before = self.registry.snapshot()
        try:
            for impl in self.pm.hook.reelgraph_register_nodes.get_hookimpls():
                if impl.plugin_name == name:
                    impl.function(**{a: self.registry for a in impl.argnames})
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            info.error = _short_error(exc)
            self.registry.restore(before, info)
        finally:
            self.registry._current = None
