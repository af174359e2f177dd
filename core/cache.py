"""Content-addressed results: cache keys, an in-memory LRU with a byte budget, and a safe disk cache.

A node's key hashes its type, version, canonical literal inputs and, for each link, the key of the
upstream node and the output name. Keys therefore depend on what a node computes from, never on node
ids, so identical subgraphs share results across runs and a changed literal invalidates exactly that
node and its descendants. Side-effecting nodes also mix in their node id, so two writers never share.

The disk cache stores only values it can write without pickle: JSON-able values as JSON, paths,
tensors in safetensors, and objects implementing the state protocol
(``__reelgraph_state__() -> (tensors, meta)`` / ``__reelgraph_restore__(tensors, meta)``). Results
holding anything else (model handles, say) stay in memory only.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

from pydantic_core import to_jsonable_python

#: Default in-memory budget (bytes); override with ``REELGRAPH_CACHE_BYTES`` or ``Engine(memory_bytes=)``.
DEFAULT_MEMORY_BYTES = int(os.environ.get("REELGRAPH_CACHE_BYTES", 4 * 1024**3))


def _canonical(obj: Any) -> Any:
    """Make floats like nan/inf and non-JSON literals hashable in a stable JSON form."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"$float": repr(obj)}
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_canonical(v) for v in obj]
    return obj


def node_key(
    type_name: str,
    version: int,
    values: Mapping[str, Any],
    upstream: Mapping[str, tuple[str, str]],
    salt: str | None = None,
) -> str:
    """The cache key of one node evaluation (hex sha256)."""
    payload = {
        "type": type_name,
        "version": version,
        "values": _canonical(to_jsonable_python(dict(values), fallback=repr)),
        "links": {k: list(v) for k, v in upstream.items()},
        "salt": salt,
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def approx_nbytes(value: Any, _depth: int = 0) -> int:
    """Roughly how much memory a value holds, for the LRU budget (tensors and arrays counted exactly)."""
    nbytes = getattr(value, "__reelgraph_nbytes__", None)
    if callable(nbytes):
        return int(nbytes())
    if hasattr(value, "element_size") and hasattr(value, "numel"):
        return int(value.element_size() * value.numel())
    if hasattr(value, "nbytes") and isinstance(value.nbytes, int):
        return value.nbytes
    if _depth < 3 and isinstance(value, list | tuple | set):
        return sys.getsizeof(value) + sum(approx_nbytes(v, _depth + 1) for v in value)
    if _depth < 3 and isinstance(value, dict):
        return sys.getsizeof(value) + sum(approx_nbytes(v, _depth + 1) for v in value.values())
    return sys.getsizeof(value)


class MemoryCache:
    """Results by key, least recently used dropped first once the byte budget is exceeded."""

    def __init__(self, max_bytes: int = DEFAULT_MEMORY_BYTES) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._items: OrderedDict[str, tuple[dict[str, Any], int]] = OrderedDict()

    def get(self, key: str) -> dict[str, Any] | None:
        """The outputs stored under ``key``, or None; a hit becomes the most recently used."""
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: str, outputs: dict[str, Any]) -> None:
        """Store outputs; the newest entry is always kept, even when it alone exceeds the budget."""
        if key in self._items:
            self.nbytes -= self._items.pop(key)[1]
        size = sum(approx_nbytes(v) for v in outputs.values())
        self._items[key] = (outputs, size)
        self.nbytes += size
        while self.nbytes > self.max_bytes and len(self._items) > 1:
            _, (_, dropped) = self._items.popitem(last=False)
            self.nbytes -= dropped

    def discard(self, key: str) -> None:
        """Forget one entry."""
        item = self._items.pop(key, None)
        if item is not None:
            self.nbytes -= item[1]

    def __len__(self) -> int:
        return len(self._items)


def _is_json(value: Any, depth: int = 0) -> bool:
    if depth > 50:
        return False
    if value is None or isinstance(value, bool | int | str):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_is_json(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json(v, depth + 1) for k, v in value.items())
    return False


def _is_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


class DiskCache:
    """Results persisted under a folder, one sub-folder per key, written atomically, never pickled."""

    MANIFEST = "manifest.json"
    TENSORS = "tensors.safetensors"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)

    def _dir(self, key: str) -> Path:
        return self.root / key[:2] / key

    def _encode(self, name: str, value: Any, tensors: dict[str, Any]) -> dict[str, Any] | None:
        if isinstance(value, PurePath):
            return {"codec": "path", "value": str(value)}
        if _is_json(value):
            return {"codec": "json", "value": value}
        if _is_tensor(value):
            tensors[name] = value
            return {"codec": "tensor"}
        state = getattr(value, "__reelgraph_state__", None)
        if callable(state):
            parts, meta = state()
            if not all(_is_tensor(t) for t in parts.values()) or not _is_json(meta):
                return None
            for part, tensor in parts.items():
                tensors[f"{name}/{part}"] = tensor
            return {"codec": "state", "class": type(value).__qualname__, "parts": sorted(parts), "meta": meta}
        return None

    def put(self, key: str, outputs: dict[str, Any]) -> bool:
        """Persist outputs if every value has a safe codec; return whether it was written."""
        final = self._dir(key)
        if final.exists():
            return True
        tensors: dict[str, Any] = {}
        manifest: dict[str, Any] = {}
        for name, value in outputs.items():
            entry = self._encode(name, value, tensors)
            if entry is None:
                return False
            manifest[name] = entry
        if tensors and importlib.util.find_spec("safetensors") is None:
            return False  # tensors persist only through safetensors; keep them in memory
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=final.parent))
        try:
            if tensors:
                from safetensors.torch import save_file

                save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()},
                          str(tmp / self.TENSORS))
            (tmp / self.MANIFEST).write_text(json.dumps({"outputs": manifest}), encoding="utf-8")
            os.replace(tmp, final)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not final.exists():
                raise
        return True

    def get(self, key: str, output_types: Mapping[str, Any]) -> dict[str, Any] | None:
        """Load the outputs stored under ``key``; None when absent or unreadable (treated as a miss)."""
        folder = self._dir(key)
        try:
            manifest = json.loads((folder / self.MANIFEST).read_text(encoding="utf-8"))["outputs"]
            tensors: dict[str, Any] = {}
            if (folder / self.TENSORS).exists():
                from safetensors.torch import load_file

                tensors = load_file(str(folder / self.TENSORS))
            return {name: self._decode(name, entry, tensors, output_types.get(name))
                    for name, entry in manifest.items()}
        except (OSError, ValueError, KeyError, TypeError):
            return None

    @staticmethod
    def _decode(name: str, entry: dict[str, Any], tensors: dict[str, Any], declared: Any) -> Any:
        codec = entry["codec"]
        if codec == "json":
            return entry["value"]
        if codec == "path":
            return Path(entry["value"])
        if codec == "tensor":
            return tensors[name]
        if codec == "state":
            restore = getattr(declared, "__reelgraph_restore__", None)
            if restore is None or getattr(declared, "__qualname__", None) != entry["class"]:
                raise TypeError(f"cannot restore {entry['class']} as {declared!r}")
            return restore({p: tensors[f"{name}/{p}"] for p in entry["parts"]}, entry["meta"])
        raise ValueError(f"unknown codec {codec!r}")
