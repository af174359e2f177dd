"""Node types for the server tests, loaded as a plugin from this .py file.

``s.mark`` appends its tag to the file named by ``$REELGRAPH_MARK_LOG`` each time it really runs (not when its
result comes from the cache), so a test can count how many times each job ran to completion.
"""

from __future__ import annotations

import os
import time

from reelgraph import RunContext, hookimpl, node


@node("s.mark", category="test", output="tag")
def mark(tag: str, after: int = 0) -> str:
    """Record one completed run of ``tag`` (``after`` only orders it behind another node)."""
    log = os.environ.get("REELGRAPH_MARK_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(tag + "\n")
            f.flush()
            os.fsync(f.fileno())
    return tag


@node("s.tick", category="test")
def tick(n: int, ctx: RunContext, delay: float = 0.05, salt: str = "") -> int:
    """Count to ``n``, ``delay`` seconds per step, reporting progress (``salt`` makes the cache key unique)."""
    for i in range(n):
        time.sleep(delay)
        ctx.progress(i + 1, n)
    return n


@hookimpl
def reelgraph_register_nodes(registry):  # type: ignore[no-untyped-def]
    registry.add(mark)
    registry.add(tick)
