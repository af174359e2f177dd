"""Choosing torch's CPU thread count by measurement, once per process.

On shared machines more threads can be far slower than one (measured here: 2 threads 15x slower than 1
for a UNet3D step while the other core was busy, and faster when it was idle). A short timing can miss
that contention, so the choice is made in two steps: cores that other work keeps busy (the 1-minute load
average) are not used at all; if more than one core is left, a convolution workload is timed with 1 thread
and with those cores, and the faster wins. ``REELGRAPH_THREADS`` (or ``reelgraph run --threads``)
overrides: a number, or ``auto``.
"""

from __future__ import annotations

import os
import threading
import time

ENV = "REELGRAPH_THREADS"
_lock = threading.Lock()
_chosen: int | None = None


def _time_workload(threads: int, repeats: int = 5) -> float:
    import torch

    torch.set_num_threads(threads)
    x = torch.randn(2, 32, 48, 48)
    w = torch.randn(32, 32, 3, 3)
    with torch.inference_mode():
        torch.nn.functional.conv2d(x, w, padding=1)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.nn.functional.conv2d(x, w, padding=1)
            times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def configure_threads() -> int:
    """Set torch's intra-op thread count (once per process) and return it; also installs the hook that lets
    an interrupt stop a long model call (see :mod:`reelgraph.nodes.interrupts`)."""
    global _chosen
    from .interrupts import install_interrupt_hook

    install_interrupt_hook()
    with _lock:
        if _chosen is not None:
            return _chosen
        import torch

        setting = os.environ.get(ENV, "auto").strip().lower()
        cores = os.cpu_count() or 1
        if setting not in ("", "auto"):
            _chosen = max(1, int(setting))
        else:
            busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
            free = max(1, int(cores - busy + 0.5))
            if free <= 1:
                _chosen = 1
            else:
                one, many = _time_workload(1), _time_workload(free)
                _chosen = free if many < one * 0.8 else 1
        torch.set_num_threads(_chosen)
        return _chosen
