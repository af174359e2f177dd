"""The weight files of one model component (a ``unet/``, ``vae/``, ``text_encoder/`` or ControlNet folder): which
set of files to read, checking it against the module before any memory is spent, and loading it lean.

**File sets.** A component folder holds its weights as one file or as shards listed in an index, in one or more
*variants* and formats, named as diffusers and transformers name them::

    diffusion_pytorch_model[.fp16|.bf16].safetensors   model[.fp16|.bf16].safetensors        (safetensors)
    diffusion_pytorch_model[.fp16|.bf16].bin           pytorch_model[.fp16|.bf16].bin        (pickle)
    <name>.index[.fp16|.bf16].json  ->  the shards named in its weight_map

(``.pt``, ``.pth`` and ``.ckpt`` are accepted like ``.bin``.) :func:`choose_weight_set` picks one set per
component: ``variant="auto"`` takes the variant matching the dtype (``fp16`` for float16, ``bf16`` for
bfloat16, the files without a variant for float32) and falls back to what exists; an explicit ``variant``
takes only that one (``default``: the files without a variant suffix). Within a variant safetensors wins over
a pickle, which is read only through ``torch.load(weights_only=True)`` (``reelgraph.nodes.weights``).

**Checks first.** :func:`check_weight_set` compares the names, shapes and kinds of the file set's tensors (read
from the safetensors headers, or the pickles loaded memory-mapped, never the data) with the module the config
describes, built on torch's ``meta`` device (no memory), and returns every problem found (weights the config needs
that the files lack, shapes or kinds that differ, files that cannot be read), so a loader reports all of a
folder's problems at once before building anything. Tensors the module has no place for are skipped, as
diffusers and transformers skip them (old checkpoints carry ``position_ids``, for instance).

**Lean loading.** :func:`load_weight_set` fills that meta module with the file set's tensors: each tensor is read
in its stored precision and cast once to the target dtype as it arrives (safetensors are streamed tensor by
tensor), and ``load_state_dict(assign=True)`` makes the tensors the module's own; no random weights are ever
allocated and no second copy of the model is held, so fp16 files load into fp16 without an fp32 detour and the
peak memory of a load is about the size of the loaded weights.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .weights import PICKLE_SUFFIXES, TensorInfo, WeightsError, inspect_weights, iter_weights

if TYPE_CHECKING:
    import torch

__all__ = [
    "VARIANTS",
    "WeightSet",
    "build_on_meta",
    "check_weight_set",
    "choose_weight_set",
    "computable_buffers",
    "find_weight_sets",
    "inspect_weight_set",
    "load_weight_set",
    "preferred_variants",
    "renamer_for",
]

#: What ``load_model(variant=...)`` accepts.
VARIANTS = ("auto", "default", "fp16", "bf16")
_KNOWN_VARIANTS = (None, "fp16", "bf16")
#: (safetensors stem, pickle stem) of each library's weight files.
_STEMS = {"diffusers": ("diffusion_pytorch_model", "diffusion_pytorch_model"),
          "transformers": ("model", "pytorch_model")}
_MAX_LISTED = 12
_MAX_INDEX_BYTES = 16 * 1024**2

#: ``rename(file_key) -> model_key``, or None to skip a tensor the model does not keep (``position_ids``).
Renamer = Callable[[str], "str | None"]
#: ``fit(model_key, tensor, wanted_shape) -> tensor`` reshapes a tensor stored in another layout.
Fitter = Callable[[str, Any, tuple[int, ...]], Any]
#: One renamer for every file of a set, or one per file (a set may join files in different layouts, such as a
#: Stable Diffusion UNet and an AnimateDiff motion-module file; a file absent from the mapping keeps its names).
Renames = Renamer | Mapping[Path, Renamer | None] | None


def renamer_for(rename: Renames, path: Path) -> Renamer | None:
    """The renamer that applies to the file ``path`` of a set (see :data:`Renames`)."""
    if isinstance(rename, Mapping):
        return rename.get(path)
    return rename


@dataclass(frozen=True)
class WeightSet:
    """One set of weight files of a component: its variant (None: no suffix), format and files in order."""

    folder: Path
    variant: str | None
    format: str
    files: tuple[Path, ...]

    @property
    def nbytes(self) -> int:
        """Bytes on disk (what reading it costs at most, in the stored precision)."""
        return sum(p.stat().st_size for p in self.files)

    def describe(self) -> str:
        """``unet/diffusion_pytorch_model.fp16.safetensors`` (or ``… and 2 more shard(s)``)."""
        shown = f"{self.folder.name}/{self.files[0].name}"
        return shown if len(self.files) == 1 else f"{shown} and {len(self.files) - 1} more shard(s)"

    @property
    def label(self) -> str:
        """``fp16 safetensors``, ``default pickle``, … (for messages)."""
        return f"{self.variant or 'default'} {self.format}"


def _with_variant(name: str, variant: str | None) -> str:
    """``diffusion_pytorch_model.safetensors`` -> ``diffusion_pytorch_model.fp16.safetensors`` (diffusers' rule:
    the variant goes before the last suffix, also for ``*.safetensors.index.json``)."""
    if variant is None:
        return name
    head, _, last = name.rpartition(".")
    return f"{head}.{variant}.{last}"


def _index_shards(folder: Path, index_name: str, present: set[str], problems: list[str]) -> tuple[Path, ...] | None:
    """The shard files an index lists, in order; a problem (and None) when it is unreadable or names files that
    are not plain names in the folder."""
    path = folder / index_name
    try:
        if path.stat().st_size > _MAX_INDEX_BYTES:
            raise ValueError("larger than an index can be")
        data = json.loads(path.read_text(encoding="utf-8"))
        weight_map = data["weight_map"]
        if not isinstance(weight_map, dict):
            raise ValueError("weight_map is not an object")
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        problems.append(f"{folder.name}/{index_name} is not a usable shard index ({exc})")
        return None
    names: list[str] = []
    for value in weight_map.values():
        if not isinstance(value, str) or "/" in value or "\\" in value or value in ("", ".", ".."):
            problems.append(f"{folder.name}/{index_name} names the shard {value!r}; shards must be files beside it")
            return None
        if value not in names:
            names.append(value)
    missing = [n for n in names if n not in present]
    if missing or not names:
        problems.append(f"{folder.name}/{index_name} lists shard(s) that are not there: {', '.join(missing) or '-'}")
        return None
    return tuple(folder / n for n in names)


def find_weight_sets(folder: Path, library: str, present: set[str] | None = None) -> tuple[list[WeightSet], list[str]]:
    """Every weight file set in a component folder (see the module docstring), and problems with shard indexes.

    ``present`` are the names of the regular files directly in ``folder`` (already checked by the folder scan);
    by default the folder is listed.
    """
    if present is None:
        present = {p.name for p in folder.iterdir() if p.is_file()} if folder.is_dir() else set()
    st_stem, pk_stem = _STEMS[library]
    sets: list[WeightSet] = []
    problems: list[str] = []
    for variant in _KNOWN_VARIANTS:
        for fmt, stem, suffixes in (("safetensors", st_stem, (".safetensors",)), ("pickle", pk_stem, PICKLE_SUFFIXES)):
            for suffix in suffixes:
                single = _with_variant(stem + suffix, variant)
                if single in present:
                    sets.append(WeightSet(folder, variant, fmt, (folder / single,)))
                    break
                index = _with_variant(f"{stem}{suffix}.index.json", variant)
                if index in present:
                    shards = _index_shards(folder, index, present, problems)
                    if shards is not None:
                        sets.append(WeightSet(folder, variant, fmt, shards))
                        break
    return sets, problems


def preferred_variants(dtype: torch.dtype) -> tuple[str | None, ...]:
    """The variants ``auto`` tries for ``dtype``, best first: the one stored in that precision, then the files
    without a variant (usually float32), then the other half precision."""
    import torch

    if dtype == torch.float16:
        return ("fp16", None, "bf16")
    if dtype == torch.bfloat16:
        return ("bf16", None, "fp16")
    return (None, "fp16", "bf16")


def choose_weight_set(sets: list[WeightSet], variant: str, dtype: torch.dtype, where: str,
                      library: str = "diffusers") -> tuple[WeightSet | None, str | None]:
    """The set to read for ``variant`` (one of :data:`VARIANTS`) and ``dtype``, or a problem saying what exists."""
    if variant not in VARIANTS:
        return None, f"variant must be one of {VARIANTS}, got {variant!r}"
    wanted = preferred_variants(dtype) if variant == "auto" else (None if variant == "default" else variant,)
    for want in wanted:
        for fmt in ("safetensors", "pickle"):
            for s in sets:
                if s.variant == want and s.format == fmt:
                    return s, None
    st, pk = _STEMS[library]
    if not sets:
        return None, (f"{where} has no weight files (looked for {st}[.fp16|.bf16].safetensors, {pk}[.fp16|.bf16].bin "
                      "and their sharded forms)")
    have = ", ".join(sorted({s.label for s in sets}))
    return None, f"{where} has no {variant} weights; it has: {have} (set variant to auto or to one of those)"


def build_on_meta(build: Callable[[], Any]) -> Any:
    """``build()`` under torch's ``meta`` device: the module's structure and shapes, without memory for weights."""
    import torch

    with torch.device("meta"):
        return build()


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", … and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")


def _expected(module: Any) -> dict[str, tuple[tuple[int, ...], bool]]:
    """Every state-dict entry of a (meta) module: its shape and whether it is floating point."""
    return {k: (tuple(int(d) for d in v.shape), v.is_floating_point()) for k, v in module.state_dict().items()}


def inspect_weight_set(weights: WeightSet, where: str) -> tuple[dict[Path, dict[str, TensorInfo]], list[str]]:
    """The tensors (name, dtype, shape) of every file of a set, read without their data, and the files that could
    not be read or were refused (a pickle that ``torch.load(weights_only=True)`` will not load)."""
    infos: dict[Path, dict[str, TensorInfo]] = {}
    problems: list[str] = []
    for path in weights.files:
        try:
            infos[path] = inspect_weights(path)
        except WeightsError as exc:
            kind = "the pickle file" if weights.format == "pickle" else "the file"
            problems.append(f"{where}: {kind} {path.name} was refused or is unreadable: {exc}")
    return infos, problems


def check_weight_set(weights: WeightSet, module: Any, where: str, rename: Renames = None,
                     fit: Fitter | None = None,
                     infos: dict[Path, dict[str, TensorInfo]] | None = None,
                     only: Callable[[str], bool] | None = None) -> list[str]:
    """Every mismatch between a file set and the (meta) ``module``: unreadable or refused files, tensors the model
    lacks, weights the files lack, shapes that differ; empty when the files fit. ``infos`` are the set's tensors
    from :func:`inspect_weight_set`, when already read. ``only(key)`` limits the check to the module's weights it
    accepts (the files of one part of a module joined from two sources, such as an AnimateDiff motion adapter)."""
    if infos is None:
        infos, problems = inspect_weight_set(weights, where)
        if problems:
            return problems
    problems = []
    found: dict[str, TensorInfo] = {}
    source: dict[str, str] = {}
    for path in weights.files:
        file_rename = renamer_for(rename, path)
        for name, info in infos[path].items():
            key = file_rename(name) if file_rename is not None else name
            if key is None:
                continue
            if key in found:
                problems.append(f"{where}: {name} appears twice ({source[key]} and {path.name})")
                continue
            found[key], source[key] = info, path.name
    expected = _expected(module)
    if only is not None:
        expected = {k: v for k, v in expected.items() if only(k)}
    missing = sorted(set(expected) - set(found) - computable_buffers(module))
    misfits = []
    for key in sorted(set(found) & set(expected)):
        shape, floating = expected[key]
        info = found[key]
        if info.shape != shape and not (fit is not None and _fits(fit, key, info, shape)):
            misfits.append(f"{key} {list(info.shape)} (the config wants {list(shape)})")
        elif floating != info.floating:
            misfits.append(f"{key} holds {info.dtype}")
    if missing:
        problems.append(f"{where}: {len(missing)} weight(s) the config needs are not in {weights.describe()}: "
                        f"{_listing(missing)}")
    if misfits:
        problems.append(f"{where}: {len(misfits)} tensor(s) have other shapes than the config's: {_listing(misfits)}")
    return problems


def _fits(fit: Fitter, key: str, info: TensorInfo, shape: tuple[int, ...]) -> bool:
    import torch

    try:
        return tuple(fit(key, torch.empty(info.shape, device="meta"), shape).shape) == shape
    except (RuntimeError, ValueError):
        return False


def _sinusoid(owner: Any) -> bool:
    """Whether ``owner`` is diffusers' ``SinusoidalPositionalEmbedding`` (AnimateDiff's motion modules), whose
    ``pe`` table its constructor computes (AnimateDiff's original files carry it as ``pos_encoder.pe``, which
    diffusers' own conversion drops and recomputes)."""
    return type(owner).__name__ == "SinusoidalPositionalEmbedding" and type(owner).__module__.startswith("diffusers")


def computable_buffers(module: Any) -> set[str]:
    """The state-dict buffers of ``module`` that a loader computes when the files lack them (the motion modules'
    sinusoidal ``pe`` tables): not required in a weight set."""
    out = set()
    for name, sub in module.named_modules():
        if _sinusoid(sub) and "pe" not in sub._non_persistent_buffers_set:
            out.add(f"{name}.pe" if name else "pe")
    return out


def _computed_buffer(module: Any, key: str, dtype: torch.dtype) -> Any:
    """The value of the computable buffer ``key`` (see :func:`computable_buffers`): the owner's class rebuilt on
    the CPU at the buffer's size computes it exactly as diffusers does."""
    owner_name, _, _ = key.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    _, length, width = owner.pe.shape
    return type(owner)(int(width), int(length)).pe.to(dtype)


def _materialise_buffers(module: Any) -> None:
    """Give the buffers a meta build left empty (not in any weight file) their values: CLIP's ``position_ids``
    (``arange``) is the only one the allowed classes have; any other is an error, never left on meta."""
    import torch

    for name, buffer in list(module.named_buffers()):
        if not buffer.is_meta:
            continue
        owner_name, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        if leaf == "position_ids":
            value = torch.arange(buffer.shape[-1], dtype=buffer.dtype).expand(buffer.shape)
            owner.register_buffer(leaf, value, persistent=leaf not in owner._non_persistent_buffers_set)
        else:
            raise WeightsError(f"the buffer {name} is not in the weight files and cannot be computed")


def _wanted(name: str, rename: Renamer | None, expected: dict[str, Any]) -> bool:
    key = rename(name) if rename is not None else name
    return key is not None and key in expected


def load_weight_set(weights: WeightSet, module: Any, dtype: torch.dtype, rename: Renames = None,
                    fit: Fitter | None = None) -> Any:
    """Fill the meta ``module`` with the file set's tensors, each read in its stored precision and cast once to
    ``dtype`` (floating-point tensors only), and return it; ``check_weight_set`` must have passed. Computable
    buffers the files lack (:func:`computable_buffers`) are computed."""
    expected = _expected(module)
    state: dict[str, Any] = {}
    for path in weights.files:
        file_rename = renamer_for(rename, path)
        for name, tensor in iter_weights(path, dtype, keep=lambda n, r=file_rename: _wanted(n, r, expected)):
            key = file_rename(name) if file_rename is not None else name
            if key is None or key not in expected:
                continue
            shape = expected[key][0]
            if tuple(tensor.shape) != shape and fit is not None:
                tensor = fit(key, tensor, shape)
            state[key] = tensor
    for key in computable_buffers(module) - set(state):
        state[key] = _computed_buffer(module, key, dtype)
    module.load_state_dict(state, strict=True, assign=True)
    del state
    _materialise_buffers(module)
    return module
