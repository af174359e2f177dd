"""Interrupts that land inside one long model call, not only between denoising steps.

A node checks for a stop request at every ``ctx.progress`` tick, but one UNet call on a large model can
take minutes. A process-wide torch forward pre-hook checks the running node's stop flag (found through
``reelgraph.context.current_context``) before every module's forward, so Ctrl-C or SIGTERM stops a run
within one layer. Outside a node, or with no stop requested, the hook does nothing but read a context
variable.
"""

from __future__ import annotations

import threading
from typing import Any

_lock = threading.Lock()
_installed = False


def _check(module: Any, args: Any) -> None:
    from reelgraph.context import current_context

    ctx = current_context()
    if ctx is not None and ctx.interrupted:
        ctx.check_interrupted()


def install_interrupt_hook() -> None:
    """Install the forward pre-hook once per process (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        import torch

        torch.nn.modules.module.register_module_forward_pre_hook(_check)
        _installed = True
