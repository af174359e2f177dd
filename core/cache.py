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

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from pydantic_core import to_jsonable_python

from .files import pid_alive

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
    salt: Any = None,
    code: Any = None,
) -> str:
    """The cache key of one node evaluation (hex sha256); ``code`` is the node's code identity."""
    payload = {
        "type": type_name,
        "version": version,
        "code": code,
        "values": _canonical(to_jsonable_python(dict(values), fallback=repr)),
        "links": {k: list(v) for k, v in upstream.items()},
        "salt": salt,
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def approx_nbytes(value: Any, _depth: int = 0, _seen: set[int] | None = None) -> int:
    """Roughly how much memory a value holds, for the LRU budget.

    Tensors and arrays count their bytes; a model (anything with ``parameters()`` and ``buffers()``, such
    as a torch module) counts its parameters and buffers; dataclass handles count their fields. Storage
    shared within one value (a LoRA-patched copy's untouched weights, say) is counted once.
    """
    seen = set() if _seen is None else _seen
    nbytes = getattr(value, "__reelgraph_nbytes__", None)
    if callable(nbytes):
        return int(nbytes())
    if hasattr(value, "element_size") and hasattr(value, "numel") and hasattr(value, "data_ptr"):
        storage = getattr(value, "untyped_storage", None)
        ptr = value.data_ptr()
        if ptr and ptr in seen:
            return 0
        seen.add(ptr)
        try:
            return int(storage().nbytes()) if callable(storage) and ptr else int(value.element_size() * value.numel())
        except RuntimeError:
            return int(value.element_size() * value.numel())
    if id(value) in seen:
        return 0
    seen.add(id(value))
    if callable(getattr(value, "parameters", None)) and callable(getattr(value, "buffers", None)):
        try:
            tensors = [*value.parameters(), *value.buffers()]
        except TypeError:
            tensors = []
        return sys.getsizeof(value) + sum(approx_nbytes(t, _depth + 1, seen) for t in tensors)
    if hasattr(value, "nbytes") and isinstance(value.nbytes, int):
        return value.nbytes
    if _depth < 4 and dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sys.getsizeof(value) + sum(approx_nbytes(getattr(value, f.name, None), _depth + 1, seen)
                                          for f in dataclasses.fields(value))
    if _depth < 4 and isinstance(value, list | tuple | set):
        return sys.getsizeof(value) + sum(approx_nbytes(v, _depth + 1, seen) for v in value)
    if _depth < 4 and isinstance(value, dict):
        return sys.getsizeof(value) + sum(approx_nbytes(v, _depth + 1, seen) for v in value.values())
    return sys.getsizeof(value)


class MemoryCache:
    """Results by key, least recently used dropped first once the byte budget is exceeded (thread-safe).

    Each entry may carry ``meta`` (what a side-effecting node wrote, say) next to its outputs.
    """

    def __init__(self, max_bytes: int = DEFAULT_MEMORY_BYTES) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._items: OrderedDict[str, tuple[dict[str, Any], int, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> dict[str, Any] | None:
        """The outputs stored under ``key``, or None; a hit becomes the most recently used."""
        entry = self.entry(key)
        return None if entry is None else entry[0]

    def entry(self, key: str) -> tuple[dict[str, Any], Any] | None:
        """``(outputs, meta)`` stored under ``key``, or None."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0], item[2]

    def put(self, key: str, outputs: dict[str, Any], meta: Any = None) -> None:
        """Store outputs; the newest entry is always kept, even when it alone exceeds the budget."""
        size = approx_nbytes(list(outputs.values()))
        with self._lock:
            if key in self._items:
                self.nbytes -= self._items.pop(key)[1]
            self._items[key] = (outputs, size, meta)
            self.nbytes += size
            while self.nbytes > self.max_bytes and len(self._items) > 1:
                _, (_, dropped, _) = self._items.popitem(last=False)
                self.nbytes -= dropped

    def discard(self, key: str) -> None:
        """Forget one entry."""
        with self._lock:
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


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _digest_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CacheEntryError(ValueError):
    """A disk cache entry is damaged or does not hold what the node declares (it is then a miss)."""


@dataclass
class CacheRead:
    """What reading one key found: ``outputs`` (and ``meta``) on a hit; ``problem`` when the entry was bad."""

    outputs: dict[str, Any] | None = None
    meta: Any = None
    problem: str | None = None


@dataclass
class CacheWrite:
    """How storing one key went: ``written``, ``exists``, ``unstorable`` (no safe codec) or ``failed``."""

    status: str
    message: str = ""


@dataclass
class EntryInfo:
    """One entry on disk: its key, size in bytes and last use (manifest mtime)."""

    key: str
    path: Path
    nbytes: int
    used: float


class DiskCache:
    """Results persisted under a folder, one sub-folder per key, written atomically, never pickled.

    Every entry's manifest carries the sha256 of its tensor file and a digest of itself; an entry that does
    not verify, or that holds another kind of value than the node declares, is reported and treated as a
    miss, and the next write replaces it. Writes are atomic (a temporary folder renamed into place) and
    fsynced; a write that fails (disk full, read-only) reports ``failed`` and leaves nothing behind.
    With ``max_bytes``, the least recently used entries are removed once the cache grows past it.
    Temporary folders of killed processes are swept when the cache is opened.
    """

    MANIFEST = "manifest.json"
    TENSORS = "tensors.safetensors"
    FORMAT = 2

    def __init__(self, root: str | Path, max_bytes: int | None = None) -> None:
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._sweep_temporaries()

    def _dir(self, key: str) -> Path:
        return self.root / key[:2] / key

    def _sweep_temporaries(self) -> None:
        for shard in self.root.iterdir() if self.root.is_dir() else ():
            if not shard.is_dir():
                continue
            for tmp in shard.glob(".tmp-*"):
                parts = tmp.name.split("-")
                pid = int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else None
                if pid is None or not pid_alive(pid):
                    shutil.rmtree(tmp, ignore_errors=True)

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

    def put(self, key: str, outputs: dict[str, Any], meta: Any = None) -> bool:
        """Persist outputs if every value has a safe codec; return whether the entry is there now."""
        return self.store(key, outputs, meta).status in ("written", "exists")

    def store(self, key: str, outputs: dict[str, Any], meta: Any = None) -> CacheWrite:
        """Persist outputs (and JSON-able ``meta``); see :class:`CacheWrite` for the outcomes. Never raises
        for a failing disk."""
        final = self._dir(key)
        if final.exists():
            if self._verify(final, key) is not None:
                return CacheWrite("exists")
            shutil.rmtree(final, ignore_errors=True)
        tensors: dict[str, Any] = {}
        manifest: dict[str, Any] = {}
        for name, value in outputs.items():
            entry = self._encode(name, value, tensors)
            if entry is None:
                return CacheWrite("unstorable")
            manifest[name] = entry
        if not _is_json(meta):
            return CacheWrite("unstorable")
        if tensors and importlib.util.find_spec("safetensors") is None:
            return CacheWrite("unstorable")  # tensors persist only through safetensors; keep them in memory
        tmp: Path | None = None
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=final.parent))
            files: dict[str, Any] = {}
            if tensors:
                from safetensors.torch import save_file

                save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()},
                          str(tmp / self.TENSORS))
                _fsync(tmp / self.TENSORS)
                files[self.TENSORS] = {"size": (tmp / self.TENSORS).stat().st_size,
                                       "sha256": _sha256_file(tmp / self.TENSORS)}
            body = {"format": self.FORMAT, "key": key, "outputs": manifest, "meta": meta, "files": files}
            text = json.dumps({**body, "digest": _digest_json(body)})
            (tmp / self.MANIFEST).write_text(text, encoding="utf-8")
            _fsync(tmp / self.MANIFEST)
            try:
                os.replace(tmp, final)
            except OSError:
                if final.exists() and self._verify(final, key) is not None:
                    return CacheWrite("exists")  # another writer stored the same key first
                raise
            tmp = None
            _fsync(final.parent)
        except OSError as exc:
            return CacheWrite("failed", f"{type(exc).__name__}: {exc}")
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        if self.max_bytes is not None:
            self.prune(self.max_bytes)
        return CacheWrite("written")

    def _verify(self, folder: Path, key: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """``(manifest, files)`` when ``folder`` is a whole, untampered entry for ``key``; else None."""
        try:
            doc = json.loads((folder / self.MANIFEST).read_text(encoding="utf-8"))
            body = {k: v for k, v in doc.items() if k != "digest"}
            if doc.get("digest") != _digest_json(body) or doc.get("format") != self.FORMAT or doc.get("key") != key:
                return None
            for name, facts in doc["files"].items():
                path = folder / name
                if path.stat().st_size != facts["size"] or _sha256_file(path) != facts["sha256"]:
                    return None
            return doc, doc["files"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def get(self, key: str, output_types: Mapping[str, Any]) -> dict[str, Any] | None:
        """Load the outputs stored under ``key``; None when absent or bad (a bad entry is removed)."""
        return self.read(key, output_types).outputs

    def read(self, key: str, output_types: Mapping[str, Any]) -> CacheRead:
        """Load and verify one entry; a damaged or mistyped entry is removed and reported as ``problem``."""
        folder = self._dir(key)
        if not (folder / self.MANIFEST).exists():
            return CacheRead()
        verified = self._verify(folder, key)
        problem = "its checksums do not match (damaged or truncated)"
        if verified is not None:
            doc, files = verified
            try:
                tensors: dict[str, Any] = {}
                if self.TENSORS in files:
                    from safetensors.torch import load_file

                    tensors = load_file(str(folder / self.TENSORS))
                outputs = {name: self._decode(name, entry, tensors, output_types.get(name))
                           for name, entry in doc["outputs"].items()}
                if set(outputs) != set(output_types) and output_types:
                    raise CacheEntryError(f"it holds outputs {sorted(outputs)}, not {sorted(output_types)}")
                with contextlib.suppress(OSError):
                    os.utime(folder / self.MANIFEST)  # last use, for pruning
                return CacheRead(outputs, doc.get("meta"))
            except (CacheEntryError, OSError, ValueError, KeyError, TypeError) as exc:
                problem = str(exc)
        shutil.rmtree(folder, ignore_errors=True)
        return CacheRead(problem=problem)

    @staticmethod
    def _decode(name: str, entry: dict[str, Any], tensors: dict[str, Any], declared: Any) -> Any:
        from .types import value_fits

        codec = entry["codec"]
        if codec == "json":
            value = entry["value"]
        elif codec == "path":
            value = Path(entry["value"])
        elif codec == "tensor":
            value = tensors[name]
        elif codec == "state":
            restore = getattr(declared, "__reelgraph_restore__", None)
            if restore is None or getattr(declared, "__qualname__", None) != entry["class"]:
                raise CacheEntryError(f"output {name!r} holds a {entry['class']}, not a {declared!r}")
            value = restore({p: tensors[f"{name}/{p}"] for p in entry["parts"]}, entry["meta"])
        else:
            raise CacheEntryError(f"output {name!r} has an unknown codec {codec!r}")
        if declared is not None and not value_fits(value, declared):
            raise CacheEntryError(f"output {name!r} holds a {type(value).__name__}, which the node does not declare")
        return value

    # --- maintenance -----------------------------------------------------------------------------------

    def entries(self) -> list[EntryInfo]:
        """Every entry folder, with its size and last use."""
        found = []
        for shard in sorted(self.root.iterdir()) if self.root.is_dir() else ():
            if not shard.is_dir() or shard.name.startswith("."):
                continue
            for folder in shard.iterdir():
                if folder.name.startswith(".") or not folder.is_dir():
                    continue
                try:
                    files = [p for p in folder.iterdir() if p.is_file()]
                    used = (folder / self.MANIFEST).stat().st_mtime if (folder / self.MANIFEST).exists() else 0.0
                    found.append(EntryInfo(folder.name, folder, sum(p.stat().st_size for p in files), used))
                except OSError:
                    continue
        return found

    def verify(self, remove: bool = False) -> list[EntryInfo]:
        """The entries that do not verify (removed too, with ``remove``)."""
        bad = [e for e in self.entries() if self._verify(e.path, e.key) is None]
        if remove:
            for entry in bad:
                shutil.rmtree(entry.path, ignore_errors=True)
        return bad

    def prune(self, max_bytes: int = 0) -> list[EntryInfo]:
        """Remove least recently used entries until the cache holds at most ``max_bytes``; return them."""
        with self._lock:
            entries = sorted(self.entries(), key=lambda e: e.used)
            total = sum(e.nbytes for e in entries)
            removed = []
            for entry in entries:
                if total <= max_bytes:
                    break
                shutil.rmtree(entry.path, ignore_errors=True)
                total -= entry.nbytes
                removed.append(entry)
            return removed
