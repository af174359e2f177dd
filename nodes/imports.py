"""How nodes import their heavy libraries: only the modules a workflow uses, and never silently.

:func:`announce` tells the run (a ``node_stage`` line: ``importing torch, diffusers``) before a node imports
libraries that are not loaded yet: a cold import of torch, diffusers and transformers takes seconds.

Four of diffusers' model packages (``diffusers.models.transformers``, ``.unets``, ``.autoencoders`` and
``.controlnets``) import every model of their kind in their ``__init__``: about 70 transformer models, every
UNet, every VAE. ``from diffusers import UNet3DConditionModel, AutoencoderKL`` loaded 131 modules of those
packages here; text-to-video uses 8 of them (``python -X importtime``; issue 17, ``bench/cold_start.py``).

:func:`install` (run when ``reelgraph.nodes`` is imported) adds an import hook for exactly those four package
names. The packages are then created without running their ``__init__``; their submodules import normally
(``import diffusers.models.unets.unet_3d_condition`` loads that file and what it imports), and the first
attribute the package itself is asked for (``from diffusers.models.unets import UNet2DModel``) runs the real
``__init__`` in place, so every name diffusers exports stays reachable. Nothing else in diffusers changes.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import sys
import threading
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reelgraph import RunContext

#: The diffusers packages whose ``__init__`` waits until one of their own attributes is asked for.
LAZY_PACKAGES = frozenset({
    "diffusers.models.transformers",
    "diffusers.models.unets",
    "diffusers.models.autoencoders",
    "diffusers.models.controlnets",
})

_lock = threading.RLock()


class _DeferredInitLoader(importlib.abc.Loader):
    """Creates the package module and defers its ``__init__`` to the first missing attribute."""

    def __init__(self, real: importlib.abc.Loader) -> None:
        self.real = real

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None  # the default module object

    def exec_module(self, module: ModuleType) -> None:
        deferred_init = _DeferredInit(module, self.real)

        def __getattr__(name: str) -> Any:  # a module-level __getattr__ (PEP 562)
            if not name.startswith("__"):
                deferred_init.run()
                with contextlib.suppress(KeyError):
                    return module.__dict__[name]
            raise AttributeError(f"module {module.__name__!r} has no attribute {name!r}")

        def __dir__() -> list[str]:
            deferred_init.run()
            return sorted(module.__dict__)

        module.__dict__.update(__getattr__=__getattr__, __dir__=__dir__, __reelgraph_deferred__=deferred_init)


class _DeferredInit:
    """A package's real ``__init__``, run once, on demand."""

    def __init__(self, module: ModuleType, loader: importlib.abc.Loader) -> None:
        self.module, self.loader, self.done = module, loader, False

    def run(self) -> None:
        """Run the ``__init__`` unless it ran or is running (a name it looks up while running stays missing)."""
        with _lock:
            if self.done:
                return
            self.done = True
            try:
                exec(self.loader.get_code(self.module.__name__), self.module.__dict__)  # type: ignore[attr-defined]
            except BaseException:
                self.done = False  # as a failed import: the next lookup tries again and raises again
                raise


class _Finder(importlib.abc.MetaPathFinder):
    """Finds the lazy packages with the normal path finder and swaps in the deferring loader."""

    def find_spec(self, fullname: str, path: Any, target: ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in LAZY_PACKAGES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not spec.submodule_search_locations \
                or not hasattr(spec.loader, "get_code"):
            return spec
        spec.loader = _DeferredInitLoader(spec.loader)
        return spec


_FINDER = _Finder()


def install() -> None:
    """Add the hook (once per process); packages already imported are left as they are."""
    with _lock:
        if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
            sys.meta_path.insert(0, _FINDER)


def deferred(name: str) -> bool:
    """Whether the package ``name`` is imported with its ``__init__`` not run yet (for tests and benchmarks)."""
    module = sys.modules.get(name)
    state = module.__dict__.get("__reelgraph_deferred__") if module is not None else None
    return isinstance(state, _DeferredInit) and not state.done


def announce(ctx: RunContext | None, *modules: str) -> None:
    """Import ``modules`` (e.g. ``"torch"``), first naming on ``ctx`` (a stage line) those not imported yet."""
    missing = [name for name in modules if name not in sys.modules]
    if not missing:
        return
    if ctx is not None:
        ctx.stage("importing " + ", ".join(missing))
    for name in missing:
        importlib.import_module(name)
