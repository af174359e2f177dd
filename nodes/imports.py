"""How nodes import their heavy libraries: when they need them, and never silently.

A cold import of torch, diffusers and transformers takes seconds (most of a fresh ``reelgraph run`` on the
built-in model), so :func:`announce` tells the run first (a ``node_stage`` line: ``importing torch``).
Modules that only some workflows use (torchmetrics, OpenCV, Ray, diffusers' pipelines) are imported inside the
functions that use them, so text-to-video never loads them.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reelgraph import RunContext


def announce(ctx: RunContext | None, *modules: str) -> None:
    """Import ``modules`` (e.g. ``"torch"``), first naming on ``ctx`` (a stage line) those not imported yet."""
    missing = [name for name in modules if name not in sys.modules]
    if not missing:
        return
    if ctx is not None:
        ctx.stage("importing " + ", ".join(missing))
    for name in missing:
        importlib.import_module(name)
