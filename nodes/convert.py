"""``reelgraph convert MODEL``: write safetensors copies of a model's pickle weight files, once.

reelgraph reads ``.bin`` / ``.pt`` / ``.pth`` / ``.ckpt`` files only through ``torch.load(weights_only=True)``
(see ``weights``), which is safe but slower to open and always reads the whole file; a safetensors copy is read
lazily, tensor by tensor, and needs no unpickler at all. Converting changes no tensor (same names, same dtypes,
same values):

* a folder (a diffusers model, one component, a ControlNet, an sd-webui-text2video folder): every pickle weight
  file in it gets a safetensors twin beside it, named as diffusers and transformers look for it
  (``pytorch_model[.fp16].bin`` -> ``model[.fp16].safetensors``, ``diffusion_pytorch_model.bin`` ->
  ``diffusion_pytorch_model.safetensors``, any other ``name.pth`` -> ``name.safetensors``); a shard index
  (``*.bin.index.json``) gets its ``*.safetensors.index.json``. With ``out``, the whole folder is copied there
  instead (which must not exist), with the pickles replaced by their safetensors (a twin already there is copied);
* a single file: ``<stem>.safetensors`` beside it, or at ``out``.

Nothing is ever replaced: when a target already exists the conversion stops before writing anything (and a
file that appears meanwhile is not overwritten either: files are published with ``link``, which refuses an
existing name). Each written file is reported with its sha256. The folder is checked first like any model
folder (links that lead out of it, special files, too many entries).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from .model_safety import scan_folder
from .weights import PICKLE_SUFFIXES, load_state_dict

if TYPE_CHECKING:
    import torch

__all__ = ["ConvertError", "convert", "convert_lines", "safetensors_name"]

_INDEX_SUFFIXES = tuple(f"{s}.index.json" for s in PICKLE_SUFFIXES)


class ConvertError(ValueError):
    """A model cannot be converted: nothing to convert, a target that exists, a refused or unreadable pickle."""


def safetensors_name(name: str) -> str:
    """The safetensors twin of a pickle weight file's name (see the module docstring)."""
    stem, _, suffix = name.rpartition(".")
    if f".{suffix.lower()}" not in PICKLE_SUFFIXES:
        raise ConvertError(f"{name} is not a pickle weight file")
    if stem == "pytorch_model" or stem.startswith(("pytorch_model.", "pytorch_model-")):
        stem = "model" + stem[len("pytorch_model"):]
    return f"{stem}.safetensors"


def _index_target(name: str) -> str:
    """``pytorch_model.bin.index.json`` -> ``model.safetensors.index.json`` (also with a variant inside)."""
    for suffix in PICKLE_SUFFIXES:
        marker = f"{suffix}.index"
        if marker in name:
            head, tail = name.split(marker, 1)
            return safetensors_name(head + suffix).removesuffix(".safetensors") + ".safetensors.index" + tail
    raise ConvertError(f"{name} is not a shard index")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(16 * 1024**2), b""):
            digest.update(block)
    return digest.hexdigest()


def _publish(tmp: Path, target: Path) -> None:
    """Give ``tmp`` the name ``target`` without ever replacing a file there."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise ConvertError(f"{target} appeared while converting; it was left as it is") from None
    finally:
        tmp.unlink(missing_ok=True)


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors that own their bytes (safetensors refuses tensors sharing memory)."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for name, tensor in state.items():
        tensor = tensor.contiguous()
        span = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if tensor.numel() and span in seen:
            tensor = tensor.clone()
        seen.add(span)
        out[name] = tensor
    return out


def _write_safetensors(source: Path, target: Path) -> None:
    """Read ``source`` through ``torch.load(weights_only=True)`` (memory-mapped) and write it as ``target``."""
    from safetensors.torch import save_file

    from .weights import WeightsError

    try:
        state = load_state_dict(source, mmap=True)
    except WeightsError as exc:
        raise ConvertError(str(exc)) from exc
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        save_file(_unshared(state), str(tmp), metadata={"format": "pt"})
        del state
        _publish(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _write_index(source: Path, target: Path) -> None:
    """The safetensors shard index of a pickle shard index: the same map, the shards' new names."""
    data = json.loads(source.read_text(encoding="utf-8"))
    weight_map = data.get("weight_map")
    if not isinstance(weight_map, dict):
        raise ConvertError(f"{source} has no weight_map")
    data["weight_map"] = {k: safetensors_name(v) if isinstance(v, str) else v for k, v in weight_map.items()}
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    _publish(tmp, target)


def _plan_folder(folder: Path, out: Path | None) -> tuple[list[tuple[Path, Path, str]], list[tuple[Path, Path]]]:
    """(source, target, kind) for every file to write, and (source, target) of the files to copy as they are."""
    files = scan_folder(folder, ConvertError)
    writes: list[tuple[Path, Path, str]] = []
    copies: list[tuple[Path, Path]] = []
    dest = out if out is not None else folder
    for f in files:
        parent, _, name = f.relative.rpartition("/")
        source = folder / f.relative
        target_dir = dest / parent if parent else dest
        if name.lower().endswith(_INDEX_SUFFIXES):  # (a copy drops it: its shards are not copied)
            writes.append((source, target_dir / _index_target(name), "index"))
        elif Path(name).suffix.lower() in PICKLE_SUFFIXES:
            writes.append((source, target_dir / safetensors_name(name), "weights"))
        elif out is not None:
            copies.append((source, dest / f.relative))
    if out is not None:  # a twin already beside its pickle is copied, not written again
        copied = {dst for _, dst in copies}
        writes = [w for w in writes if w[1] not in copied]
    return writes, copies


def convert(model: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> list[tuple[Path, str]]:
    """Write safetensors copies of ``model``'s pickle weights (see the module docstring); ``(path, sha256)`` of
    every file written, weights first. Raises ``ConvertError`` (nothing written) when there is nothing to
    convert or a target exists."""
    source = Path(model).expanduser()
    target_root = Path(out).expanduser() if out is not None else None
    if source.is_dir():
        folder = source.resolve()
        if target_root is not None and target_root.exists():
            raise ConvertError(f"{target_root} exists; give a new folder to copy the converted model into")
        writes, copies = _plan_folder(folder, target_root)
    elif source.is_file():
        if source.suffix.lower() not in PICKLE_SUFFIXES:
            raise ConvertError(f"{source} is not a pickle weight file ({', '.join(PICKLE_SUFFIXES)})")
        target = target_root if target_root is not None else source.with_name(safetensors_name(source.name))
        if target.is_dir():
            target = target / safetensors_name(source.name)
        writes, copies = [(source, target, "weights")], []
    else:
        raise ConvertError(f"{source} does not exist")
    if not any(kind == "weights" for _, _, kind in writes) and (target_root is None or not source.is_dir()):
        raise ConvertError(f"{source} holds no pickle weight files (.bin, .pt, .pth, .ckpt): nothing to convert")
    taken = [str(t) for _, t, _ in writes if t.exists() or t.is_symlink()]
    if taken:
        raise ConvertError("these files exist already and are never replaced: " + ", ".join(taken))
    for src, dst in copies:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    written: list[tuple[Path, str]] = []
    for kind in ("weights", "index"):
        for src, dst, what in writes:
            if what != kind:
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            (_write_safetensors if kind == "weights" else _write_index)(src, dst)
            written.append((dst, _sha256(dst)))
    return written


def convert_lines(model: str, out: str | None = None) -> list[str]:
    """What ``reelgraph convert`` prints: ``sha256  path`` per written file (``sha256sum``'s format)."""
    return [f"{digest}  {path}" for path, digest in convert(model, out)]

