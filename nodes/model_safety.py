"""Checks that make a model folder from a stranger safe to hand to diffusers and transformers.

A model folder is data: reelgraph reads its JSON configs and safetensors weights and never runs code that
came with it. The loaders (``model_loading``, ``controlnet``, ``clip_models``) call these helpers *before*
any library call, so a refusal happens before diffusers or transformers open a file:

* :func:`scan_folder` walks the folder (at most :data:`MAX_FOLDER_ENTRIES` entries) and refuses special
  files (FIFOs, devices, sockets: reading one can block forever) and symbolic links whose target lies
  outside the folder, or, for a Hugging Face hub cache snapshot (``models--org--name/snapshots/<rev>``),
  outside that repository's ``blobs/`` folder, or to nothing. The refusal names the link inside the folder
  and says nothing about its target (not its path, not whether it exists).
* :func:`read_config` reads a JSON config (size-capped) and refuses the keys that make the libraries fetch
  or run code shipped with a model (``auto_map``, ``custom_pipeline``), naming the file and the key.
* :func:`check_class` refuses component classes outside a slot's allow-list.
* :func:`module_bytes` estimates what a module built from a config would hold, by building it on torch's
  ``meta`` device (no memory for the weights) and stopping as soon as the running total passes the limit,
  so an inflated config is refused in milliseconds instead of being allocated.

Errors are raised as the caller's own error class (``error=``), so each loader keeps its public exception;
a budget overrun is :class:`ModelTooLarge`, which the nodes report as ``too_large``.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reelgraph.memory import format_size

if TYPE_CHECKING:
    import torch

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_FOLDER_ENTRIES",
    "REMOTE_CODE_KEYS",
    "FolderFile",
    "ModelTooLarge",
    "check_budget",
    "check_class",
    "check_file",
    "config_files",
    "hub_blobs_dir",
    "module_bytes",
    "read_config",
    "scan_folder",
    "weight_file_bytes",
]

#: Most files and folders a model folder may hold (a real one has a few dozen).
MAX_FOLDER_ENTRIES = 10_000
#: Largest JSON config read (real configs are a few kB; model_index.json under 1 kB).
MAX_CONFIG_BYTES = 4 * 1024**2
#: Config keys that ask diffusers/transformers to import code from the model folder or the hub.
REMOTE_CODE_KEYS = ("auto_map", "custom_pipeline")
_MAX_JSON_DEPTH = 32

ErrorType = Callable[[str], Exception]


class ModelTooLarge(ValueError):
    """A model's configs (or weight files) describe more bytes than the run's memory limit allows.

    ``nbytes`` is the estimate (a lower bound when the estimate stopped early at the limit), ``limit`` the
    limit and ``what`` names the model part; the nodes turn it into a ``too_large`` error on ``source``.
    """

    def __init__(self, what: str, nbytes: int, limit: int, at_least: bool = False) -> None:
        self.what, self.nbytes, self.limit = what, int(nbytes), int(limit)
        need = ("more memory than the limit of {limit} (the count stopped there)" if at_least
                else "about {size} of memory, more than the limit of {limit}")
        need = need.format(size=format_size(self.nbytes), limit=format_size(self.limit))
        super().__init__(f"{what} would need {need}; use a smaller model or a smaller dtype (float16), or raise "
                         "--max-memory")


@dataclass(frozen=True)
class FolderFile:
    """One file a loader may read: its path relative to the folder, and its (target's) size and mtime."""

    relative: str
    size: int
    mtime_ns: int


def hub_blobs_dir(folder: Path) -> Path | None:
    """The ``blobs/`` folder of the hub cache repository whose snapshot ``folder`` (resolved) is, if any.

    The hub cache stores each file once in ``models--org--name/blobs/<sha>`` and links
    ``snapshots/<rev>/<path>`` to it. ``blobs`` must be a real folder, not a link (a linked ``blobs`` could
    lead anywhere).
    """
    snapshots, repo = folder.parent, folder.parent.parent
    if snapshots.name != "snapshots" or not repo.name.startswith("models--"):
        return None
    blobs = repo / "blobs"
    if blobs.is_symlink() or not blobs.is_dir():
        return None
    return blobs


def _inside(path: str, root: str) -> bool:
    """Whether the (real) ``path`` is ``root`` or below it."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _link_error(folder: Path, relative: str, hub: bool, error: ErrorType) -> Exception:
    """The refusal of a link that does not lead to something inside: the very same words whatever its target
    is, and whether or not that target (or any path on the way to it) exists."""
    where = "the model folder or its hub cache repository's blobs/ folder" if hub else "the model folder"
    return error(f"model folder {str(folder)!r}: {relative} is a symbolic link that does not lead inside {where}; "
                 "reelgraph reads only the folder's own files. Copy the file into the folder instead of linking it")


def _walk_link(link: str, area: str, max_hops: int = 40) -> str | None:
    """Where the link ``link`` leads, resolved one component at a time as the system would, or None as soon as
    the walk would visit a path outside ``area`` (other than an ancestor of it), a missing one, or too many links.

    Each path is checked *before* it is looked at, so nothing outside ``area`` is ever touched and the outcome
    cannot tell whether something out there exists (``outside/missing/../../folder/file`` is refused whether or
    not ``outside/missing`` exists). Ancestors of ``area`` (an absolute link walks down through them) are real
    folders that are known to exist.
    """
    def allowed(path: str) -> bool:
        return _inside(path, area) or _inside(area, path)

    current = os.path.realpath(os.path.dirname(link))
    todo: list[str] = []
    hops = 0
    target = os.readlink(link)
    while True:
        if os.path.isabs(target):
            current = os.sep
        todo.extend(reversed([part for part in target.split(os.sep) if part not in ("", ".")]))
        while todo:
            part = todo.pop()
            step = os.path.dirname(current) if part == ".." else os.path.join(current, part)
            if not allowed(step):
                return None
            try:
                info = os.lstat(step)
            except OSError:
                return None
            if stat.S_ISLNK(info.st_mode):
                hops += 1
                if hops > max_hops:
                    return None
                target = os.readlink(step)
                break
            current = step
        else:
            return current


def _check_link(link: str, folder: Path, relative: str, blobs: Path | None,
                error: ErrorType) -> tuple[bool, os.stat_result]:
    """Check a symbolic link inside ``folder``: ``(is_folder, stat)`` of an allowed target, else raise.

    A link to a file may lead inside the folder or into the hub ``blobs/`` folder (walking through its own
    repository to get there); a link to a folder only inside the folder (it is not walked again: its files are
    checked where they really are). A link that leads elsewhere, to nothing, or through any path outside gets
    one message that names the link only (see ``_walk_link``).
    """
    roots = [os.path.realpath(folder)] + ([os.path.realpath(blobs)] if blobs is not None else [])
    area = os.path.dirname(roots[1]) if blobs is not None else roots[0]
    real = _walk_link(link, area)
    if real is None or not any(_inside(real, root) for root in roots):
        raise _link_error(folder, relative, blobs is not None, error)
    target = os.stat(real)
    if stat.S_ISDIR(target.st_mode):
        if not _inside(real, roots[0]):
            raise _link_error(folder, relative, blobs is not None, error)
        return True, target
    if not stat.S_ISREG(target.st_mode):
        raise error(f"model folder {str(folder)!r}: {relative} is neither a regular file nor a folder")
    return False, target


def scan_folder(folder: Path, error: ErrorType, max_entries: int = MAX_FOLDER_ENTRIES) -> list[FolderFile]:
    """Every file under ``folder`` that a loader may read, after checking each entry (see the module docstring).

    Walks without following linked folders, visiting at most ``max_entries`` entries; returns the files
    sorted by relative path (with the size and mtime of what they lead to, for cache keys). Raises ``error``
    for a special file, a link leading outside, or too many entries.
    """
    blobs = hub_blobs_dir(folder)
    files: list[FolderFile] = []
    pending = [(folder, "")]
    seen = 0
    while pending:
        directory, prefix = pending.pop()
        entries: list[os.DirEntry[str]] = []
        try:
            with os.scandir(directory) as listing:
                for entry in listing:  # counted while listing: a folder of millions stops at the cap
                    seen += 1
                    if seen > max_entries:
                        raise error(f"model folder {str(folder)!r} holds more than {max_entries} files and folders; "
                                    "a model folder holds a few dozen. Point source at the model's own folder")
                    entries.append(entry)
        except OSError as exc:
            where = prefix.rstrip("/") or "."
            raise error(f"model folder {str(folder)!r}: cannot list {where} ({exc.strerror})") from None
        for entry in sorted(entries, key=lambda e: e.name):
            relative = prefix + entry.name
            if entry.is_symlink():
                is_dir, target = _check_link(entry.path, folder, relative, blobs, error)
                if not is_dir:
                    files.append(FolderFile(relative, target.st_size, target.st_mtime_ns))
            elif entry.is_dir(follow_symlinks=False):
                pending.append((Path(entry.path), relative + "/"))
            elif entry.is_file(follow_symlinks=False):
                info = entry.stat(follow_symlinks=False)
                files.append(FolderFile(relative, info.st_size, info.st_mtime_ns))
            else:
                raise error(f"model folder {str(folder)!r}: {relative} is neither a regular file nor a folder")
    return sorted(files, key=lambda f: f.relative)


def check_file(path: Path, error: ErrorType) -> None:
    """Check one file read from beside a single-file source (a config next to a weights file) like an entry of
    its folder: a regular file, or a link leading inside that folder or its hub ``blobs/`` folder."""
    folder = path.parent.resolve()
    if path.is_symlink():
        is_dir, _ = _check_link(str(path), folder, path.name, hub_blobs_dir(folder), error)
        if is_dir:
            raise error(f"{str(path)!r} is a folder, not a file")
    elif path.exists() and not path.is_file():
        raise error(f"{str(path)!r} is neither a regular file nor a folder")


def config_files(files: Iterable[FolderFile]) -> list[str]:
    """The JSON configs among ``files``: ``model_index.json``, ``config.json`` and ``*_config.json`` (where
    ``auto_map`` and friends live; vocabularies such as ``vocab.json`` are data, never configs)."""
    out = []
    for f in files:
        name = f.relative.rsplit("/", 1)[-1]
        if name in ("model_index.json", "config.json") or name.endswith("_config.json"):
            out.append(f.relative)
    return out


def _find_remote_code_key(value: Any, depth: int = 0) -> str | None:
    """The first :data:`REMOTE_CODE_KEYS` key in ``value`` (a parsed JSON document), at any depth."""
    if depth > _MAX_JSON_DEPTH:
        return None
    if isinstance(value, dict):
        for key in REMOTE_CODE_KEYS:
            if key in value:
                return key
        items: Iterable[Any] = value.values()
    elif isinstance(value, list):
        items = value
    else:
        return None
    for item in items:
        found = _find_remote_code_key(item, depth + 1)
        if found is not None:
            return found
    return None


def read_config(path: Path, folder: Path, error: ErrorType) -> dict[str, Any]:
    """Read the JSON object in ``path`` (inside ``folder``, already scanned), refusing remote-code keys.

    ``auto_map`` makes transformers' Auto classes (and diffusers' ``AutoModel``) import a ``.py`` shipped
    with the model, and ``custom_pipeline`` makes diffusers import a pipeline module; reelgraph never does
    either, so a config that asks for it is refused rather than silently loaded another way.
    """
    name = _relative(path, folder)
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise error(f"model folder {str(folder)!r}: {name} is {format_size(size)}, larger than a config can be "
                        f"({format_size(MAX_CONFIG_BYTES)})")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise error(f"model folder {str(folder)!r}: {name} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise error(f"model folder {str(folder)!r}: {name} must hold a JSON object")
    key = _find_remote_code_key(data)
    if key is not None:
        raise error(f"model folder {str(folder)!r}: {name} has the key {key!r}, which asks to run code shipped "
                    "with the model; reelgraph never runs a model's code. Remove the key (and the .py files) or "
                    "use a model that needs no custom code")
    return data


def _relative(path: Path, folder: Path) -> str:
    """``path`` relative to ``folder`` (POSIX separators) when inside it, else its name."""
    try:
        return path.relative_to(folder).as_posix()
    except ValueError:
        return path.name


def check_class(where: str, slot: str, name: Any, allowed: Sequence[str], error: ErrorType) -> str:
    """Return ``name`` if it is one of the ``allowed`` classes for ``slot``, else raise ``error`` naming the slot,
    the class and the allowed ones (``where`` says which file asked for it)."""
    if isinstance(name, str) and name in allowed:
        return name
    choices = allowed[0] if len(allowed) == 1 else ", ".join(allowed[:-1]) + " or " + allowed[-1]
    raise error(f"{where}: the {slot} slot names the class {name!r}, which reelgraph does not load there; allowed "
                f"there: only {choices}")


class _OverBudget(Exception):
    """Raised from inside a module constructor to stop a meta build as soon as it passes the limit."""

    def __init__(self, nbytes: int) -> None:
        super().__init__(nbytes)
        self.nbytes = nbytes


def _tensor_bytes(tensor: Any, itemsize: int) -> int:
    """Bytes ``tensor`` will hold once loaded: floating tensors in the target dtype, others as they are."""
    size = int(tensor.element_size()) if not tensor.is_floating_point() else itemsize
    return int(tensor.numel()) * size


def module_bytes(build: Callable[[], Any], dtype: torch.dtype, limit: int | None) -> tuple[int, bool]:
    """Estimate the bytes of the parameters and buffers of the module ``build()`` constructs, in ``dtype``.

    ``build`` runs under ``torch.device("meta")``, so no weight memory is allocated. Module registration
    hooks keep a running total and abort the build as soon as it passes ``limit``, so a config inflated to
    terabytes is refused after the first oversized layer. Returns ``(nbytes, complete)``: the exact total
    of the finished module, or ``(running total, False)`` when the build stopped at the limit. Exceptions
    of ``build`` (a config the class cannot build) propagate.
    """
    import torch
    from torch.nn.modules import module as torch_module

    itemsize = torch.empty((), dtype=dtype).element_size()
    owner = threading.get_ident()
    seen: dict[tuple[int, str], tuple[int, Any]] = {}
    total = 0

    def count(module: Any, name: str, tensor: Any) -> None:
        nonlocal total
        if tensor is None or threading.get_ident() != owner:
            return
        size = _tensor_bytes(tensor, itemsize)
        key = (id(module), name)
        total += size - seen.get(key, (0, None))[0]
        seen[key] = (size, module)  # keeping the module alive keeps its id unique during the build
        if limit is not None and total > limit:
            raise _OverBudget(total)

    hooks = [torch_module.register_module_parameter_registration_hook(count),
             torch_module.register_module_buffer_registration_hook(count)]
    try:
        with torch.device("meta"):
            module = build()
    except _OverBudget as exc:
        return exc.nbytes, False
    finally:
        for hook in hooks:
            hook.remove()
    tensors = {id(t): t for t in [*module.parameters(), *module.buffers()]}
    return sum(_tensor_bytes(t, itemsize) for t in tensors.values()), True


def weight_file_bytes(files: Iterable[FolderFile], prefix: str, names: Sequence[str]) -> int:
    """Total size of the weight files a loader reads for one component: ``<prefix><name>`` and its shards
    ``<prefix><stem>-NNNNN-of-NNNNN.safetensors``; variant files (``*.fp16.safetensors``) are not read."""
    total = 0
    for f in files:
        if not f.relative.startswith(prefix) or "/" in f.relative[len(prefix):]:
            continue
        base = f.relative[len(prefix):]
        for name in names:
            stem = name.removesuffix(".safetensors")
            shard = base.startswith(stem + "-") and base.endswith(".safetensors") and "-of-" in base
            if base == name or shard:
                total += f.size
                break
    return total


def check_budget(parts: Sequence[tuple[str, Callable[[int | None], tuple[int, bool]]]], limit: int | None,
                 what: str) -> int:
    """Add up the estimated bytes of ``parts`` (``(name, estimate(remaining_limit))``) and raise
    :class:`ModelTooLarge` as soon as they pass ``limit`` (None: no limit, nothing is estimated).

    Returns the total. Each ``estimate`` gets what is left of the limit, so it can stop early.
    """
    if limit is None:
        return 0
    total = 0
    for name, estimate in parts:
        nbytes, complete = estimate(limit - total)
        total += nbytes
        if total > limit:
            raise ModelTooLarge(f"{what} (its {name}, by its config)" if not complete else what, total, limit,
                                at_least=not complete)
    return total
