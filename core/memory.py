"""Memory guards: how much a run may hold, and refusing work that would exceed it.

A node about to allocate something large (decoded frames, latents, UNet activations) calls
:func:`check_tensor_memory` (``ctx, shape, dtype_bytes, what, input``) with the shape it is about to
create, or ``ctx.check_memory(nbytes, what, input=...)`` for other sizes, first; past the limit it fails
with ``too_large`` instead of being killed by the operating system halfway through. The limit is
``--max-memory`` (``max_memory=``), by default 80 % of the memory available when the run starts.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from typing import Any

DEFAULT_FRACTION = 0.8
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def available_memory() -> int | None:
    """Bytes of memory available now (Linux ``MemAvailable``; else physical memory), or None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def default_limit() -> int | None:
    """The default memory limit: a fraction of what is available now (None when unknown)."""
    free = available_memory()
    return int(free * DEFAULT_FRACTION) if free else None


def parse_size(text: str) -> int | None:
    """``"8G"``, ``"512M"``, ``"1.5g"``, ``"1000000"`` to bytes; ``"0"``/``"off"``/``"none"`` to None (no limit)."""
    value = text.strip().lower()
    if value in ("0", "off", "none", ""):
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?", value)
    if m is None:
        raise ValueError(f"not a size: {text!r} (use e.g. 8G, 512M or off)")
    return int(float(m[1]) * _UNITS[m[2]])


def format_size(nbytes: float) -> str:
    """A short human size: ``1.5 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(nbytes) < 1024:
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024
    return f"{nbytes:.1f} TiB"


def tensor_nbytes(shape: Sequence[int], dtype_bytes: int | Any = 4) -> int:
    """Bytes of a dense tensor of ``shape`` whose elements take ``dtype_bytes`` bytes each (an int, or any
    dtype with an ``itemsize``, such as ``torch.float16``). Exact integer arithmetic: no overflow."""
    size = int(getattr(dtype_bytes, "itemsize", dtype_bytes))
    return math.prod(int(s) for s in shape) * size


def check_tensor_memory(ctx: Any, shape: Sequence[int], dtype_bytes: int | Any, what: str, input: str | None = None,
                        *, copies: int = 1, extra: int = 0) -> int:
    """Refuse (``too_large``, naming ``input``) before a node allocates ``copies`` tensors of ``shape`` (plus
    ``extra`` bytes of working memory) when that exceeds the run's limit; returns the bytes counted.

    The one helper for "this node will allocate a tensor of this shape and dtype": nodes call it with the
    shape they are about to create instead of doing their own arithmetic. ``ctx`` is the node's
    :class:`~reelgraph.RunContext` (anything with ``check_memory``). ``dtype_bytes`` may count several
    buffers per element, e.g. ``1 + 4`` for uint8 frames decoded into a float32 result.
    """
    nbytes = tensor_nbytes(shape, dtype_bytes) * int(copies) + int(extra)
    ctx.check_memory(nbytes, what, input=input)
    return nbytes
