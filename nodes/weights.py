"""The one place reelgraph reads weight files: safetensors first, pickle formats only without code.

Every node that reads a state dict from a file (model folders, single-file UNets, LoRA files, single-file
ControlNets, feature extractors) goes through this module. ``.safetensors`` files are parsed here (a JSON
header, then raw little-endian tensor bytes) and read one tensor at a time with plain file reads into memory
the tensor owns, so a loader can cast each tensor as it arrives and never holds a second copy of the model
(:func:`iter_safetensors`); ``.bin`` / ``.pt`` / ``.pth`` / ``.ckpt`` files only through
``torch.load(weights_only=True)``, which refuses any pickle that would construct objects other than tensors
and plain containers (so a planted payload never runs). :func:`inspect_weights` lists a file's tensor names,
dtypes and shapes without reading the tensor data (the safetensors header, or the pickle loaded with
``mmap=True``), so loaders check a whole folder before anything is built.
"""

from __future__ import annotations

import json
import struct
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import Tensor

__all__ = [
    "PICKLE_SUFFIXES",
    "SAFETENSORS_SUFFIXES",
    "TensorInfo",
    "UnsafeWeightsError",
    "WeightsError",
    "inspect_weights",
    "iter_safetensors",
    "iter_weights",
    "load_checkpoint",
    "load_state_dict",
    "safetensors_header",
]

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
#: Largest safetensors header read (the safetensors library's own limit).
MAX_HEADER_BYTES = 100 * 1024**2
_CHUNK = 64 * 1024**2
_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
           "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
           "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
             "F8_E4M3": 1, "F8_E5M2": 1}


class WeightsError(ValueError):
    """A weight file is missing, unreadable or of an unknown format."""


class UnsafeWeightsError(WeightsError):
    """A pickle weight file holds more than tensors (it would run code when fully unpickled)."""


@dataclass(frozen=True)
class TensorInfo:
    """What a file says about one tensor: its torch dtype name (``"float16"``) and shape."""

    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        """Number of elements."""
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def floating(self) -> bool:
        """Whether the tensor holds floating-point numbers (those are cast to a loader's dtype)."""
        return self.dtype.startswith(("float", "bfloat"))


@dataclass(frozen=True)
class _Entry:
    info: TensorInfo
    code: str
    begin: int
    end: int


def _header_error(path: Path, why: str) -> WeightsError:
    return WeightsError(f"{str(path)!r} is not a readable safetensors file: {why}")


_HEADERS: dict[tuple[str, int, int], tuple[dict[str, _Entry], dict[str, str], int]] = {}
_HEADERS_KEPT = 8
_headers_lock = threading.Lock()


def _read_header(path: Path) -> tuple[dict[str, _Entry], dict[str, str], int]:
    """Parse and check a safetensors header: ``(entries, metadata, offset of the data)``.

    Every entry must name a known dtype, a shape of non-negative integers and a byte range of exactly that
    size inside the file; ranges may not overlap. Nothing but the header is read. The last few parsed headers
    are kept, keyed by the file's path, size and mtime: a loader that checks a file and then reads it, or reads
    one file for several parts (a single Stable Diffusion checkpoint holds three networks), parses it once.
    """
    try:
        info = path.stat()
    except OSError as exc:
        raise WeightsError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    key = (str(path.resolve()), info.st_size, info.st_mtime_ns)
    with _headers_lock:
        cached = _HEADERS.get(key)
    if cached is not None:
        return dict(cached[0]), dict(cached[1]), cached[2]
    parsed = _parse_header(path)
    with _headers_lock:
        while len(_HEADERS) >= _HEADERS_KEPT:
            del _HEADERS[next(iter(_HEADERS))]
        _HEADERS[key] = parsed
    return dict(parsed[0]), dict(parsed[1]), parsed[2]


def _parse_header(path: Path) -> tuple[dict[str, _Entry], dict[str, str], int]:
    """:func:`_read_header` without the cache."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            raw = handle.read(8)
            if len(raw) < 8:
                raise _header_error(path, "shorter than its 8-byte header length")
            (length,) = struct.unpack("<Q", raw)
            if length < 2 or length > MAX_HEADER_BYTES or 8 + length > size:
                raise _header_error(path, f"its header length {length} does not fit the file ({size} bytes)")
            text = handle.read(length)
    except OSError as exc:
        raise WeightsError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _header_error(path, f"its header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise _header_error(path, "its header is not a JSON object")
    data_start, data_size = 8 + length, size - 8 - length
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _header_error(path, "__metadata__ must map names to strings")
    entries: dict[str, _Entry] = {}
    for name, spec in header.items():
        if not isinstance(spec, dict):
            raise _header_error(path, f"the entry {name!r} is not an object")
        code, shape, offsets = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
        if code not in _DTYPES:
            raise _header_error(path, f"{name!r} has the unknown dtype {code!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            raise _header_error(path, f"{name!r} has a bad shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
            raise _header_error(path, f"{name!r} has bad data_offsets {offsets!r}")
        begin, end = offsets
        info = TensorInfo(_DTYPES[code], tuple(shape))
        if not 0 <= begin <= end <= data_size or end - begin != info.numel * _ITEMSIZE[code]:
            raise _header_error(path, f"{name!r}: its bytes {offsets} do not hold a {code} tensor of shape "
                                      f"{shape} inside the file")
        entries[name] = _Entry(info, code, data_start + begin, data_start + end)
    last = data_start
    for entry in sorted(entries.values(), key=lambda e: (e.begin, e.end)):
        if entry.begin < last:
            raise _header_error(path, "two tensors share bytes")
        last = max(last, entry.end)
    return entries, {str(k): v for k, v in metadata.items()}, data_start


def safetensors_header(path: str | Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """The tensors (name -> dtype and shape) and the ``__metadata__`` of a safetensors file, read from its
    header only."""
    entries, metadata, _ = _read_header(Path(path))
    return {name: e.info for name, e in entries.items()}, metadata


def _read_into(handle: Any, view: memoryview, path: Path) -> None:
    """Fill ``view`` from ``handle`` (in chunks: a single read is capped near 2 GiB on Linux)."""
    done = 0
    while done < len(view):
        got = handle.readinto(view[done:done + _CHUNK])
        if not got:
            raise WeightsError(f"{str(path)!r} ended early (truncated while reading?)")
        done += got


def iter_safetensors(path: str | Path, dtype: torch.dtype | None = None,
                     names: set[str] | None = None) -> Iterator[tuple[str, Tensor]]:
    """Yield ``(name, tensor)`` for every tensor of a safetensors file (or those in ``names``), in file order.

    Each tensor is read straight into memory it owns (no memory map, no second copy of the file), and a
    floating-point tensor is cast to ``dtype`` at once when given, so its stored-precision buffer is freed
    before the next one is read: loading costs the final size plus one tensor.
    """
    import torch

    if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
        raise WeightsError("reading safetensors needs a little-endian machine")
    p = Path(path)
    entries, _, _ = _read_header(p)
    order = sorted((e.begin, name) for name, e in entries.items() if names is None or name in names)
    try:
        with open(p, "rb", buffering=0) as handle:
            for begin, name in order:
                entry = entries[name]
                torch_dtype = getattr(torch, entry.info.dtype)
                if entry.info.numel == 0:
                    tensor = torch.empty(entry.info.shape, dtype=torch_dtype)
                else:
                    raw = torch.empty(entry.end - entry.begin, dtype=torch.uint8)
                    handle.seek(begin)
                    _read_into(handle, memoryview(raw.numpy()).cast("B"), p)
                    tensor = raw.view(torch_dtype).reshape(entry.info.shape)
                    del raw
                if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
                    tensor = tensor.to(dtype)
                yield name, tensor
    except OSError as exc:
        raise WeightsError(f"cannot read {str(p)!r}: {exc.strerror or exc}") from None


def _torch_load(path: Path, mmap: bool) -> Any:
    """The only unpickling call: ``torch.load(weights_only=True)``, memory-mapped when asked and possible."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except RuntimeError as exc:
        if mmap and "mmap" in str(exc):  # a legacy (non-zip) torch.save file cannot be mapped: read it
            return _torch_load(path, False)
        raise


def load_state_dict(path: str | Path, *, allow_pickle: bool = True, mmap: bool = False,
                    dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """Read a flat ``{name: tensor}`` state dict from ``path`` on the CPU.

    ``allow_pickle=False`` refuses pickle formats outright (for sources where safetensors is the only
    acceptable format). Nested checkpoints (``{"state_dict": {...}}``) are unwrapped one level. ``dtype`` casts
    floating-point tensors as they are read (safetensors) or one by one after loading (pickles). ``mmap=True``
    maps a pickle's tensors instead of reading them (for listing them; legacy files are read in full).
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"weight file {str(p)!r} does not exist")
    suffix = p.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return dict(iter_safetensors(p, dtype))
    if suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise UnsafeWeightsError(f"{str(p)!r} is a pickle file; only .safetensors is accepted here")
        try:
            data = _torch_load(p, mmap)
        except Exception as exc:  # UnpicklingError for payloads, RuntimeError for corrupt archives
            raise UnsafeWeightsError(
                f"{str(p)!r} was refused: torch.load(weights_only=True) would not load it ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}). Convert it to .safetensors from a trusted copy."
            ) from exc
        if isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
            data = data["state_dict"]
        if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                 for k, v in data.items()):
            raise WeightsError(f"{str(p)!r} does not hold a flat dict of tensors")
        if dtype is not None:
            for key in list(data):  # one at a time, so each original is freed as its cast copy arrives
                if data[key].is_floating_point() and data[key].dtype != dtype:
                    data[key] = data[key].to(dtype)
        return data
    raise WeightsError(f"{str(p)!r}: unknown weight format {suffix or '(no extension)'}; use .safetensors")


def iter_weights(path: str | Path, dtype: torch.dtype | None = None,
                 keep: Callable[[str], bool] | None = None) -> Iterator[tuple[str, Tensor]]:
    """Yield ``(name, tensor)`` from a safetensors file (streamed) or a pickle (loaded, then handed out and
    cast one by one, each dropped from the loaded dict as it goes); ``keep(name)`` False skips a tensor (a
    safetensors one is never read)."""
    p = Path(path)
    if p.suffix.lower() in SAFETENSORS_SUFFIXES:
        names = None
        if keep is not None:
            names = {n for n in safetensors_header(p)[0] if keep(n)}
        yield from iter_safetensors(p, dtype, names)
        return
    data = load_state_dict(p)
    for key in list(data):
        tensor = data.pop(key)
        if keep is not None and not keep(key):
            continue
        if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
            tensor = tensor.to(dtype)
        yield key, tensor


def inspect_weights(path: str | Path) -> dict[str, TensorInfo]:
    """Name -> dtype and shape of every tensor in a weight file, without reading the tensors' data.

    Safetensors: the header. Pickles: ``torch.load(weights_only=True, mmap=True)`` (a refused pickle raises
    :class:`UnsafeWeightsError` here, before anything is built).
    """
    p = Path(path)
    if p.suffix.lower() in SAFETENSORS_SUFFIXES:
        return safetensors_header(p)[0]
    data = load_state_dict(p, mmap=True)
    out = {k: TensorInfo(str(v.dtype).removeprefix("torch."), tuple(int(d) for d in v.shape)) for k, v in data.items()}
    del data
    return out


def load_checkpoint(path: str | Path) -> Any:
    """Read a training checkpoint (nested dicts/lists of tensors and plain values, e.g. optimiser state).

    Only through ``torch.load(weights_only=True)``: a checkpoint that would construct other objects is
    refused with :class:`UnsafeWeightsError` instead of running code.
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"checkpoint {str(p)!r} does not exist")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UnsafeWeightsError(f"{str(p)!r} was refused by torch.load(weights_only=True): {exc}") from exc

