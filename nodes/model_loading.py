"""Load a text-to-video model (UNet3D or AnimateDiff UNetMotionModel + VAE + CLIP text encoder + scheduler) into
value handles.

**AnimateDiff** (a Stable Diffusion 1.5 UNet with motion modules; see ``nodes/animatediff/`` and docs/models.md):
an ``AnimateDiffPipeline`` folder, a ``StableDiffusionPipeline`` folder or a single LDM-layout SD 1.5 checkpoint
(``config``: a folder with its configs, default the shipped SD 1.5 ones) with ``motion_adapter`` (a ``MotionAdapter``
folder or an original motion-module file). The UNet part then reads the SD UNet's files and the adapter's as one
weight set (a renamer per file) into a ``UNetMotionModel`` built on the meta device from the config diffusers'
``from_unet2d`` derives; a single checkpoint's three parts each read their own tensors of the one file.

Sources are either a diffusers folder in the ModelScope ``TextToVideoSDPipeline`` layout (a
``model_index.json`` next to ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/`` and ``scheduler/``) or
``builtin:tiny`` (see ``tiny_models``); ``unet=`` replaces the folder's UNet3D by a single file in ModelScope's
original layout (``text2video_pytorch_model.pth`` / ``.safetensors``, see ``modelscope_convert``) or in diffusers'
layout, or by an sd-webui-text2video folder (``zs2_576w/``) holding such a file.

**Weights** (see ``model_files``): each component reads one file set, chosen by ``variant`` (``auto``: the
files stored in the requested ``dtype`` when the folder has them, e.g. ``*.fp16.safetensors`` for float16, else
what exists), safetensors before pickles; ``.bin`` / ``.pt`` files are read only through
``torch.load(weights_only=True)``, which refuses a pickle that would run code. Every component's files are
checked (readable, refused pickles, the weights its config needs, their shapes) before anything is built, and
all problems of a folder are reported together. Modules are built on torch's ``meta`` device and filled with
the file tensors, each cast once from its stored precision (``load_state_dict(assign=True)``): nothing random is
allocated, no second copy is held, and fp16 files load into fp16 without an fp32 detour.

Loaded models are cached per process, keyed by the source id, the resolved folder, the device, the dtype, the
variant, the UNet file and the size and mtime of every file, so the same source is loaded once and an edited
folder is reloaded.

A model folder is data from a stranger, and nothing in it runs. Before any diffusers or transformers call
(see ``model_safety``):

* **Classes come from an allow-list per slot** (:data:`ALLOWED_CLASSES`): ``model_index.json`` may only name
  ``UNet3DConditionModel``, ``AutoencoderKL``, a CLIP text model, a CLIP tokenizer and one of the diffusers
  noise schedulers in ``values.SCHEDULER_CLASSES``; for the AnimateDiff and Stable Diffusion pipelines the unet slot
  takes ``UNetMotionModel`` / ``UNet2DConditionModel`` instead (:data:`UNET_CLASSES`) and ``motion_adapter`` only
  ``MotionAdapter`` (also the ``_class_name`` of an adapter folder's ``config.json``). The allowed class is
  instantiated directly, never through an ``Auto*`` class that dispatches on the folder's content; transformers
  gets ``trust_remote_code=False`` and every loader ``local_files_only=True``. A diffusers slot may name its
  library as a diffusers module path (zeroscope_v2_XL's index says ``models.unet_3d_condition``): nothing is
  imported from it, the class still comes from the allow-list.
* **No remote code**: a config (``model_index.json``, ``config.json``, ``*_config.json``) holding ``auto_map``
  or ``custom_pipeline`` is refused, naming the file and the key; a ``.py`` in the folder is never imported.
* **Size before allocation**: with a memory limit (``max_bytes``, the run's ``--max-memory``), the UNet, VAE
  and text encoder are first built from their configs on torch's ``meta`` device to count their bytes in the
  target dtype (the weight files' sizes count too), and a model over the limit is refused
  (:class:`~reelgraph.nodes.model_safety.ModelTooLarge`) before any real module exists.
* **Symbolic links**: every entry of the folder (at most ``MAX_FOLDER_ENTRIES``) is checked first. A link may
  lead to a file inside the folder, or, when the folder is a Hugging Face hub cache snapshot
  (``models--org--name/snapshots/<rev>``), into that repository's own ``blobs/`` folder (where the hub keeps
  every file); a link to a folder must stay inside the model folder. Links are resolved one component at a
  time and the walk stops at the first path outside (the folder, or for a snapshot its repository), before
  looking at it. Any other link is refused, naming the link inside the folder and never its target, with
  the same message whether the target (or anything on the way to it) exists or not.
  Special files (FIFOs, devices, sockets) are refused too: reading one could block forever. Hard links
  cannot be told apart from copies and are read like any file; the check is made once, before loading, so a
  folder that someone rewrites while it loads is out of its reach. A single UNet file follows the same rule
  (a regular file, or a link inside its folder).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .model_files import (
    VARIANTS,
    Renames,
    WeightSet,
    build_on_meta,
    check_weight_set,
    choose_weight_set,
    find_weight_sets,
    inspect_weight_set,
    load_weight_set,
)
from .model_safety import (
    FolderFile,
    ModelTooLarge,
    check_budget,
    check_class,
    check_file,
    config_files,
    module_bytes,
    read_config,
    scan_folder,
)
from .values import SCHEDULER_CLASSES, VAE, Scheduler, TextEncoder, UNet3D
from .weights import PICKLE_SUFFIXES, SAFETENSORS_SUFFIXES, TensorInfo

if TYPE_CHECKING:
    import torch

__all__ = [
    "ALLOWED_CLASSES",
    "VARIANTS",
    "ModelLoadError",
    "ModelTooLarge",
    "clear_model_cache",
    "load_model",
    "resolve_device",
    "resolve_dtype",
    "source_fingerprint",
    "unet_fingerprint",
]

_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_WEIGHT_COMPONENTS = ("unet", "vae", "text_encoder")
_SINGLE_FILE_SUFFIXES = (*SAFETENSORS_SUFFIXES, *PICKLE_SUFFIXES, ".pkl")
_DTYPES = ("float32", "float16", "bfloat16")
_MEMORY_FORMATS = ("contiguous", "channels_last")
#: How a diffusers slot of ``model_index.json`` may name its library besides ``diffusers``: a module path inside
#: diffusers, as early diffusers versions wrote it (zeroscope_v2_XL: ``models.unet_3d_condition``). It is only a
#: label: the class comes from :data:`ALLOWED_CLASSES` and nothing is imported from the path.
_DIFFUSERS_MODULE_PATH = re.compile(r"^(diffusers\.)?(models|pipelines)(\.[a-z][a-z0-9_]*){1,3}$")

#: What ``model_index.json`` may name in each slot: ``(library, classes)``. These are the classes the
#: ModelScope / Zeroscope text-to-video folders (and the Stable Diffusion folders they derive from) use and
#: that reelgraph's nodes know how to drive; ``AutoencoderKL`` is the only VAE those layouts ship.
ALLOWED_CLASSES: dict[str, tuple[str, tuple[str, ...]]] = {
    "unet": ("diffusers", ("UNet3DConditionModel",)),
    "vae": ("diffusers", ("AutoencoderKL",)),
    "text_encoder": ("transformers", ("CLIPTextModel", "CLIPTextModelWithProjection")),
    "tokenizer": ("transformers", ("CLIPTokenizer", "CLIPTokenizerFast")),
    "scheduler": ("diffusers", SCHEDULER_CLASSES),
}
#: The pipelines (``model_index.json``'s ``_class_name``) of the AnimateDiff family: the UNet is a
#: ``UNetMotionModel`` (a Stable Diffusion 1.5 UNet with motion modules), or a ``UNet2DConditionModel`` that the
#: folder's ``motion_adapter/`` (or the ``motion_adapter`` input) turns into one, as diffusers' pipeline does.
ANIMATEDIFF_PIPELINES = ("AnimateDiffPipeline", "AnimateDiffVideoToVideoPipeline")
#: Stable Diffusion 1.5 pipelines: their UNet becomes an AnimateDiff ``UNetMotionModel`` with ``motion_adapter``.
SD_PIPELINES = ("StableDiffusionPipeline",)
#: What the ``unet`` slot may name, per family (every other slot follows :data:`ALLOWED_CLASSES`).
UNET_CLASSES: dict[str, tuple[str, ...]] = {
    "text2video": ("UNet3DConditionModel",),
    "animatediff": ("UNetMotionModel", "UNet2DConditionModel"),
    "sd": ("UNet2DConditionModel",),
}
#: What an AnimateDiff folder's ``motion_adapter`` slot (and a motion adapter folder's config) may name.
MOTION_ADAPTER_CLASSES = ("MotionAdapter",)
#: Bytes per element of the dtypes weight files store (for a part's share of a single checkpoint).
_ITEMSIZE = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2, "int8": 1,
             "uint8": 1, "bool": 1, "float8_e4m3fn": 1, "float8_e5m2": 1}
#: Bytes a scheduler holds per training timestep (a handful of float64 tables), for the memory estimate.
_SCHEDULER_BYTES_PER_STEP = 64

Handles = tuple[UNet3D, VAE, TextEncoder, Scheduler]

_cache: dict[tuple[Any, ...], Handles] = {}
_cache_lock = threading.Lock()


class ModelLoadError(ValueError):
    """A model source is missing, malformed, unsafe (a refused pickle) or of an unsupported kind; ``input`` names
    the ``load_model`` input at fault (``source``, ``unet``, ``unet_config``, ``motion_adapter`` or ``config``)."""

    def __init__(self, message: str, input: str = "source") -> None:
        super().__init__(message)
        self.input = input


def _unet_error(message: str) -> ModelLoadError:
    return ModelLoadError(message, input="unet")


def _unet_config_error(message: str) -> ModelLoadError:
    return ModelLoadError(message, input="unet_config")


def _adapter_error(message: str) -> ModelLoadError:
    return ModelLoadError(message, input="motion_adapter")


def _config_error(message: str) -> ModelLoadError:
    return ModelLoadError(message, input="config")


def resolve_device(device: str = "auto") -> str:
    """Turn ``"auto"`` into ``"cuda"`` when a GPU is visible, else ``"mps"`` when available, else ``"cpu"``;
    other strings are passed through for torch to validate."""
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(dtype: str | torch.dtype = "float32") -> torch.dtype:
    """Map ``"float32"``, ``"float16"`` or ``"bfloat16"`` (or a ``torch.dtype``) to a ``torch.dtype``."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ModelLoadError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    return getattr(torch, dtype)


def clear_model_cache() -> None:
    """Forget every cached model, so the next ``load_model`` reads from disk again (tests, memory)."""
    with _cache_lock:
        _cache.clear()


def _resolve_folder(source: str) -> Path:
    """Map a source id to a model folder, refusing single files and unknown builtins."""
    if source.startswith("builtin:"):
        from .animatediff.tiny import TINY_ANIMATEDIFF_SOURCE, ensure_tiny_animatediff
        from .tiny_models import TINY_RANDOM_SOURCE, TINY_SOURCE, WeightsMismatch, builtin_model

        if source == TINY_ANIMATEDIFF_SOURCE:
            return ensure_tiny_animatediff().resolve()
        try:
            return builtin_model(source).resolve()
        except KeyError:
            raise ModelLoadError(f"unknown builtin model {source!r}; the builtins are {TINY_SOURCE!r}, "
                                 f"{TINY_RANDOM_SOURCE!r} and {TINY_ANIMATEDIFF_SOURCE!r}") from None
        except WeightsMismatch as exc:
            raise ModelLoadError(f"{source}: {exc}") from None
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix.lower() in _SINGLE_FILE_SUFFIXES:
            raise ModelLoadError(
                f"{source!r} is a single weight file. A text-to-video model needs a VAE, a text encoder, a tokenizer "
                "and a scheduler besides its UNet3D: give a diffusers folder (model_index.json with unet/, vae/, "
                "text_encoder/, tokenizer/, scheduler/) as source and this file as unet (a UNet3D in ModelScope's "
                "original layout, text2video_pytorch_model.pth, or in diffusers' layout). See docs/models.md."
            )
        raise ModelLoadError(f"{source!r} is a file, not a diffusers model folder")
    if not path.is_dir():
        raise ModelLoadError(f"model folder {source!r} does not exist")
    return path.resolve()


def _scan(folder: Path) -> list[FolderFile]:
    """Check every entry of the folder (links, special files, count) and list the files; see the docstring."""
    return scan_folder(folder, ModelLoadError)


def _check_configs(folder: Path, files: list[FolderFile]) -> None:
    """Refuse any config in the folder that asks for remote code (``auto_map``, ``custom_pipeline``)."""
    for relative in config_files(files):
        read_config(folder / relative, folder, ModelLoadError)


def _library_ok(component: str, library: Any) -> bool:
    """Whether the library named for a slot is the allowed class's: ``diffusers`` (or a module path inside it,
    see ``_DIFFUSERS_MODULE_PATH``) or ``transformers``."""
    wanted = ALLOWED_CLASSES.get(component, ("diffusers",))[0]
    if library == wanted:
        return True
    return wanted == "diffusers" and isinstance(library, str) and bool(_DIFFUSERS_MODULE_PATH.match(library))


def model_family(index: dict[str, Any]) -> str:
    """The family of a ``model_index.json``: ``animatediff`` (:data:`ANIMATEDIFF_PIPELINES`), ``sd``
    (:data:`SD_PIPELINES`) or ``text2video`` (ModelScope / Zeroscope, and any other pipeline name, whose slots
    follow :data:`ALLOWED_CLASSES`)."""
    pipeline = index.get("_class_name")
    if pipeline in ANIMATEDIFF_PIPELINES:
        return "animatediff"
    return "sd" if pipeline in SD_PIPELINES else "text2video"


def _read_index(folder: Path, error: Callable[[str], Exception] = ModelLoadError) -> dict[str, Any]:
    """Read and validate ``model_index.json``: every component present, each naming an allowed class (the unet
    slot's per family, :data:`UNET_CLASSES`; an AnimateDiff folder's ``motion_adapter`` a ``MotionAdapter``)."""
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise error(f"{folder} is not a diffusers model folder: model_index.json is missing")
    index = read_config(index_path, folder, error)
    family = model_family(index)
    missing = [c for c in _COMPONENTS if not isinstance(index.get(c), list) or len(index[c]) != 2]
    if missing:
        raise error(f"{index_path} lacks the component(s) {missing}; a text-to-video model needs all of "
                    f"{list(_COMPONENTS)}")
    slots = list(_COMPONENTS)
    adapter = index.get("motion_adapter")
    if family == "animatediff" and isinstance(adapter, list) and len(adapter) == 2 and adapter[1] is not None:
        slots.append("motion_adapter")
    for component in slots:
        library, classes = ALLOWED_CLASSES.get(component, ("diffusers", MOTION_ADAPTER_CLASSES))
        classes = UNET_CLASSES[family] if component == "unet" else classes
        name = index[component][1]
        if component == "scheduler" and name is None:
            continue  # the class comes from scheduler_config.json's _class_name (checked when it is read)
        check_class(f"model folder {str(folder)!r}: model_index.json", component, name, classes, error)
        if not _library_ok(component, index[component][0]):
            raise error(f"model folder {str(folder)!r}: model_index.json: the {component} slot names the "
                        f"library {index[component][0]!r}; {name} comes from {library!r}")
    for component in slots:
        if not (folder / component).is_dir():
            raise error(f"{folder} lacks the {component}/ folder named in model_index.json")
    return index


def _fingerprint(files: list[FolderFile]) -> tuple[tuple[str, int, int], ...]:
    """Size and mtime of every file under the folder: a cheap change detector for the cache key."""
    return tuple((f.relative, f.size, f.mtime_ns) for f in files)


def source_fingerprint(source: str) -> list[Any]:
    """What identifies a model source's current content: the builtin's version, or every file's size and mtime.

    Cheap (no weights are read); the engine mixes it into ``load_model``'s cache key so that a folder
    whose files change is loaded again. A folder the checks refuse has no fingerprint (``load_model`` says why).
    """
    if source.startswith("builtin:"):
        from .animatediff.tiny import TINY_ANIMATEDIFF_NAME, TINY_ANIMATEDIFF_SOURCE
        from .tiny_models import WeightsMismatch, builtin_model_version

        if source == TINY_ANIMATEDIFF_SOURCE:
            return [source, TINY_ANIMATEDIFF_NAME]
        try:
            return [source, builtin_model_version(source)]
        except (KeyError, WeightsMismatch):  # load_model reports it
            return [source, None]
    path = Path(source).expanduser()
    if not path.is_dir():
        return [source, None]
    try:
        files = _scan(path.resolve())
    except ModelLoadError:
        return [str(path.resolve()), None]
    return [str(path.resolve()), [list(e) for e in _fingerprint(files)]]


# ------------------------------------------------------------------------------------------ a single UNet file


def _resolve_unet_file(unet: str) -> tuple[Path, tuple[Any, ...]]:
    """The weight file ``unet`` names (a file, or an sd-webui-text2video folder holding one) and its fingerprint,
    after the same entry checks as a model folder."""
    from .modelscope_convert import WEBUI_UNET_FILES

    path = Path(unet).expanduser()
    if path.is_dir():
        folder = path.resolve()
        files = scan_folder(folder, _unet_error)
        names = {f.relative for f in files}
        chosen = next((n for n in WEBUI_UNET_FILES if n in names), None)
        if chosen is None:
            raise _unet_error(f"unet folder {unet!r} holds neither of {', '.join(WEBUI_UNET_FILES)} (an "
                                 "sd-webui-text2video / ModelScope folder such as zs2_576w/); give the weight file "
                                 "itself otherwise")
        return folder / chosen, (str(folder), chosen, _fingerprint(files))
    if not path.is_file():
        raise _unet_error(f"unet file {unet!r} does not exist")
    check_file(path, _unet_error)
    if path.suffix.lower() not in (*SAFETENSORS_SUFFIXES, *PICKLE_SUFFIXES):
        raise _unet_error(f"unet file {unet!r}: unknown weight format {path.suffix or '(no extension)'}; use "
                             ".safetensors, or .pth/.pt/.bin (read through torch.load(weights_only=True))")
    real = path.resolve()
    info = real.stat()
    return real, (str(real), info.st_size, info.st_mtime_ns)


def unet_fingerprint(unet: str | None, config: bool = False) -> Any:
    """What identifies a ``unet`` file's content (size and mtime; for a folder, of its files), or with
    ``config=True`` a ``unet_config``'s (its ``config.json``), for cache keys."""
    if not unet:
        return None
    if config:
        path = Path(unet).expanduser()
        path = path / "config.json" if path.is_dir() else path
        try:
            info = path.stat()
        except OSError:
            return [unet, None]
        return [str(path.resolve()), info.st_size, info.st_mtime_ns]
    try:
        return list(_resolve_unet_file(unet)[1])
    except ModelLoadError:
        return [unet, None]


def _unet_config_candidates(folder: Path, unet_config: str | None) -> list[tuple[str, dict[str, Any]]]:
    """The UNet3D configs a single UNet file may follow, most likely first: ``unet_config`` when given (a folder
    with ``config.json``, or the file), else the source folder's ``unet/config.json`` and the shipped ModelScope
    1.7B config (``modelscope_convert.MODELSCOPE_UNET_CONFIG``)."""
    from .modelscope_convert import MODELSCOPE_UNET_CONFIG

    if unet_config:
        path = Path(unet_config).expanduser()
        if path.is_dir():
            scan_folder(path.resolve(), _unet_config_error)
            path = path / "config.json"
        if not path.is_file():
            raise _unet_config_error(f"unet_config {unet_config!r}: no config.json there")
        check_file(path, _unet_config_error)
        config = read_config(path, path.parent, _unet_config_error)
        return [(str(path), config)]
    out = []
    own = folder / "unet" / "config.json"
    if own.is_file():
        out.append((f"{folder.name}/unet/config.json", read_config(own, folder, ModelLoadError)))
    out.append(("the shipped ModelScope 1.7B UNet config",
                read_config(MODELSCOPE_UNET_CONFIG, MODELSCOPE_UNET_CONFIG.parent, ModelLoadError)))
    return out


# ------------------------------------------------------------------------------------------------- planning


@dataclass
class _Part:
    """One weighted component: the file set it reads, the tensors in it, and (once built) its meta module."""

    component: str
    weights: WeightSet
    infos: dict[Path, dict[str, TensorInfo]]
    config: dict[str, Any] | None = None
    module: Any = None
    rename: Renames = None
    fit: Callable[..., Any] | None = None
    #: Builds the module (on the meta device) instead of the class ``model_index.json`` names with its folder's
    #: config: an AnimateDiff ``UNetMotionModel`` assembled from a Stable Diffusion UNet and a motion adapter.
    build: Callable[[], Any] | None = None
    #: Bytes of this part's own tensors in its files, when the files hold more than the part (a single checkpoint
    #: holds the UNet, the VAE and the text encoder); None: the files' sizes.
    disk_bytes: int | None = None


def _plan(folder: Path, index: dict[str, Any], files: list[FolderFile], variant: str, dtype: torch.dtype,
          unet: Path | None) -> tuple[dict[str, _Part], ModelLoadError | None]:
    """Choose every weighted component's file set and read what the files hold (headers; pickles loaded
    memory-mapped through ``torch.load(weights_only=True)``); the parts that could be planned, and one
    ``ModelLoadError`` with every problem (None when there is none)."""
    present: dict[str, set[str]] = {c: set() for c in _WEIGHT_COMPONENTS}
    for f in files:
        component, _, name = f.relative.partition("/")
        if component in present and name and "/" not in name:
            present[component].add(name)
    problems: list[str] = []
    inputs: set[str] = set()
    parts: dict[str, _Part] = {}
    for component in _WEIGHT_COMPONENTS:
        before = len(problems)
        where = f"{component}/"
        if component == "unet" and unet is not None:
            fmt = "safetensors" if unet.suffix.lower() in SAFETENSORS_SUFFIXES else "pickle"
            chosen: WeightSet | None = WeightSet(unet.parent, None, fmt, (unet,))
            where = f"the unet file {unet.name}"
        else:
            library = ALLOWED_CLASSES[component][0]
            sets, set_problems = find_weight_sets(folder / component, library, present[component])
            problems += [f"{component}: {p}" for p in set_problems]
            chosen, problem = choose_weight_set(sets, variant, dtype, where, library)
            if problem is not None:
                problems.append(problem)
        if chosen is not None:
            infos, read_problems = inspect_weight_set(chosen, where)
            problems += read_problems
            if not read_problems:
                parts[component] = _Part(component, chosen, infos)
        if len(problems) > before:
            inputs.add("unet" if component == "unet" and unet is not None else "source")
    if problems:
        return parts, ModelLoadError(f"model folder {str(folder)!r} cannot be loaded: " + "; ".join(problems),
                                     input=inputs.pop() if len(inputs) == 1 else "source")
    return parts, None


def _report_all(folder: Path, index: dict[str, Any], parts: dict[str, _Part], error: ModelLoadError,
                unet: Path | None, unet_config: str | None) -> ModelLoadError:
    """``error`` (the planning problems) with the problems the planned parts have against their configs too, so
    a folder's problems are all reported at once (meta builds only: nothing is allocated)."""
    try:
        _build_parts(folder, index, parts, _unet_config_candidates(folder, unet_config) if unet else None)
    except ModelLoadError as more:
        message = f"{error}; {str(more).split(': ', 1)[1] if ': ' in str(more) else more}"
        return ModelLoadError(message, input=error.input if error.input == more.input else "source")
    return error


def _text_encoder_renamer(expected: set[str]) -> Callable[[str], str | None]:
    """File keys as the text model has them: transformers 4 wrote CLIPTextModel's keys under ``text_model.`` (which
    transformers 5 no longer has), and old files hold the ``position_ids`` buffer (recomputed, skipped)."""
    def rename(key: str) -> str | None:
        if key in expected:
            return key
        if key.startswith("text_model.") and key[len("text_model."):] in expected:
            return key[len("text_model."):]
        if "text_model." + key in expected:
            return "text_model." + key
        return None if key.endswith("position_ids") else key
    return rename


def _deprecated_attention_renamer(module: Any) -> Callable[[str], str | None] | None:
    """diffusers' VAE attention once stored ``query``/``key``/``value``/``proj_attn``; map them to ``to_q``/``to_k``/
    ``to_v``/``to_out.0`` for the attention blocks that carry the marker (the rule diffusers applies on load)."""
    paths = [name for name, sub in module.named_modules() if getattr(sub, "_from_deprecated_attn_block", False)]
    if not paths:
        return None
    renames = {}
    for path in paths:
        for old, new in (("query", "to_q"), ("key", "to_k"), ("value", "to_v"), ("proj_attn", "to_out.0")):
            for leaf in ("weight", "bias"):
                renames[f"{path}.{old}.{leaf}"] = f"{path}.{new}.{leaf}"
    return lambda key: renames.get(key, key)


def _unet_fitting(part: _Part, candidates: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Pick, for a single UNet file, the first config its tensors fit (original or diffusers layout) and set the
    part's module, renamer and fitter; the problems against each config when none fits."""
    import diffusers

    from .modelscope_convert import fit_original, is_original_layout, original_key_map

    keys = [k for infos in part.infos.values() for k in infos]
    original = is_original_layout(keys)
    problems: list[str] = []
    for label, config in candidates:
        try:
            module = build_on_meta(lambda config=config: diffusers.UNet3DConditionModel.from_config(config))
        except Exception as exc:
            problems.append(f"{label} does not describe a UNet3D that can be built: {type(exc).__name__}: {exc}")
            continue
        rename = fit = None
        if original:
            mapping, _ = original_key_map(keys, config)
            rename, fit = mapping.get, fit_original
        found = check_weight_set(part.weights, module, f"the unet file {part.weights.files[0].name}", rename, fit,
                                 part.infos)
        if not found:
            part.config, part.module, part.rename, part.fit = dict(config), module, rename, fit
            return []
        problems += [f"(against {label}) {p}" for p in found]
    layout = "ModelScope's original layout" if original else "diffusers' layout"
    return [f"the unet file {part.weights.files[0].name} ({layout}) fits none of the UNet configs tried; give its "
            f"config as unet_config: " + "; ".join(problems)]


def _build_parts(folder: Path, index: dict[str, Any], parts: dict[str, _Part],
                 unet_configs: list[tuple[str, dict[str, Any]]] | None) -> None:
    """Build each weighted component on the meta device from its config and check its files against it; raise one
    ``ModelLoadError`` with every problem."""
    import diffusers
    import transformers

    problems: list[str] = []
    inputs: set[str] = set()
    for component, part in parts.items():
        if part.module is not None:
            continue  # built on meta and checked already (a single checkpoint's parts, before the adapter joins)
        where = f"{component}/ ({part.weights.describe()})"
        before = len(problems)
        try:
            if component == "unet" and unet_configs is not None:
                problems += _unet_fitting(part, unet_configs)
                inputs |= {"unet"} if len(problems) > before else set()
                continue
            if part.build is not None:
                part.module = build_on_meta(part.build)
            elif component == "text_encoder":
                cls = getattr(transformers, index[component][1])
                config = cls.config_class.from_pretrained(folder / component, local_files_only=True)
                part.module = build_on_meta(lambda cls=cls, config=config: cls(config))
                part.rename = _compose(part.rename, _text_encoder_renamer(set(part.module.state_dict())))
            else:
                cls = getattr(diffusers, index[component][1])  # an allowed class: _read_index checked it
                config = cls.load_config(folder, subfolder=component, local_files_only=True)
                if component == "unet" and part.config is not None:
                    config = part.config  # a single checkpoint's UNet2D config (of an AnimateDiff config folder)
                    cls = diffusers.UNet2DConditionModel
                part.module = build_on_meta(lambda cls=cls, config=config: cls.from_config(config))
                part.rename = _compose(part.rename, _deprecated_attention_renamer(part.module))
        except Exception as exc:
            problems.append(f"the {component} config does not describe a model that can be built: "
                            f"{type(exc).__name__}: {exc}")
            inputs.add("source")
            continue
        problems += check_weight_set(part.weights, part.module, where, part.rename, part.fit, part.infos)
        inputs |= {"source"} if len(problems) > before else set()
    if problems:
        raise ModelLoadError(f"could not load the model {str(folder)!r}: " + "; ".join(problems),
                             input=inputs.pop() if len(inputs) == 1 else "source")


def _estimate_bytes(folder: Path, index: dict[str, Any], parts: dict[str, _Part], dtype: torch.dtype,
                    limit: int | None, source: str, unet_configs: list[tuple[str, dict[str, Any]]] | None) -> None:
    """Refuse (``ModelTooLarge``) a model whose configs describe more than ``limit`` bytes, before building it.

    Each network is built from its own config on the ``meta`` device (see ``model_safety.module_bytes``), stopping
    as soon as the running total passes the limit; a component counts as the larger of that and the weight files
    it reads (the loader reads them whole). The scheduler counts its per-timestep tables.
    """
    if limit is None:
        return
    import diffusers
    import transformers

    def diffusers_part(component: str) -> Any:
        if parts[component].build is not None:
            return parts[component].build
        cls = getattr(diffusers, index[component][1])
        if component == "unet" and unet_configs is not None:
            config = unet_configs[0][1]
        else:
            config = cls.load_config(folder, subfolder=component, local_files_only=True)
        return lambda: cls.from_config(config)

    def text_part() -> Any:
        cls = getattr(transformers, index["text_encoder"][1])
        config = cls.config_class.from_pretrained(folder / "text_encoder", local_files_only=True)
        return lambda: cls(config)

    def estimate(component: str, build: Any) -> Any:
        def run(remaining: int | None) -> tuple[int, bool]:
            nbytes, complete = module_bytes(build, dtype, remaining)
            part = parts[component]
            on_disk = part.weights.nbytes if part.disk_bytes is None else part.disk_bytes
            return max(nbytes, on_disk), complete or on_disk > nbytes
        return run

    def scheduler(remaining: int | None) -> tuple[int, bool]:
        config = read_config(folder / "scheduler" / "scheduler_config.json", folder, ModelLoadError)
        steps = config.get("num_train_timesteps", 1000)
        return (int(steps) if isinstance(steps, int) and steps > 0 else 0) * _SCHEDULER_BYTES_PER_STEP, True

    try:
        estimates = [("unet", estimate("unet", diffusers_part("unet"))),
                     ("vae", estimate("vae", diffusers_part("vae"))),
                     ("text_encoder", estimate("text_encoder", text_part())), ("scheduler", scheduler)]
        check_budget(estimates, limit, f"the model {source!r}")
    except (ModelTooLarge, ModelLoadError):
        raise
    except Exception as exc:
        raise ModelLoadError(f"the configs of {folder} do not describe a model that can be built: "
                             f"{type(exc).__name__}: {exc}") from exc


def _load_component(component: str, folder: Path, loader: Any) -> Any:
    """Run one component loader, turning any failure into a ``ModelLoadError`` naming the component."""
    try:
        return loader()
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"could not load the {component} of {folder}: {type(exc).__name__}: {exc}") from exc


def quiet_hf_libraries() -> None:
    """Silence diffusers' and transformers' progress bars and advice: reelgraph reports its own progress."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _load_folder(folder: Path, source: str, index: dict[str, Any], parts: dict[str, _Part], device: str,
                 dtype: torch.dtype) -> Handles:
    """Fill the checked meta modules from their files, load the tokenizer and the scheduler, move to ``device``."""
    import transformers

    quiet_hf_libraries()
    modules = {}
    for component, part in parts.items():
        modules[component] = _load_component(
            component, folder, lambda part=part: load_weight_set(part.weights, part.module, dtype, part.rename,
                                                                 part.fit))
        part.module = None

    def load_tokenizer() -> Any:
        cls = getattr(transformers, index["tokenizer"][1])
        if not any((folder / "tokenizer" / name).is_file() for name in ("vocab.json", "tokenizer.json")):
            # The shipped SD 1.5 configs (or a config folder without tokenizer files): CLIP's own vocabulary,
            # derived from the BPE file shipped with reelgraph (animatediff.shipped).
            from .animatediff.shipped import clip_tokenizer

            return clip_tokenizer()
        return cls.from_pretrained(folder / "tokenizer", local_files_only=True, trust_remote_code=False)

    def load_scheduler() -> Scheduler:
        config = read_config(folder / "scheduler" / "scheduler_config.json", folder, ModelLoadError)
        class_name = index["scheduler"][1] or config.get("_class_name")
        check_class(f"model folder {str(folder)!r}: scheduler/scheduler_config.json", "scheduler", class_name,
                    SCHEDULER_CLASSES, ModelLoadError)
        handle = Scheduler(class_name=class_name, config=config, source=source)
        handle.create()  # fail now, not at sampling time, if the config is bad
        return handle

    unet, vae, text_encoder = modules["unet"], modules["vae"], modules["text_encoder"]
    tokenizer = _load_component("tokenizer", folder, load_tokenizer)
    scheduler = _load_component("scheduler", folder, load_scheduler)

    # A tokenizer folder with only vocab.json + merges.txt and no model_max_length loads with a huge
    # sentinel length; the text encoder's position table is the real limit.
    max_positions = int(getattr(text_encoder.config, "max_position_embeddings", 77))
    if not tokenizer.model_max_length or tokenizer.model_max_length > max_positions:
        tokenizer.model_max_length = max_positions

    for module in (unet, vae, text_encoder):
        module.to(device)
        module.eval()
        module.requires_grad_(False)
    vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
    return (
        UNet3D(module=unet, source=source, vae_scale_factor=vae_factor),
        VAE(module=vae, source=source),
        TextEncoder(tokenizer=tokenizer, module=text_encoder, source=source),
        scheduler,
    )


def _apply_speedups(handles: Handles, memory_format: str, compile: bool) -> None:
    """Convert the UNet3D's and the VAE's 2-D convolution weights to channels-last, and compile the UNet3D."""
    import torch

    unet, vae = handles[0].module, handles[1].module
    if memory_format == "channels_last":
        # Module.to(memory_format=...) refuses the UNet3D's 5-D temporal weights: convert the 4-D ones only.
        for module in (unet, vae):
            for param in module.parameters():
                if param.dim() == 4:
                    param.data = param.data.contiguous(memory_format=torch.channels_last)
    if compile:
        unet.compile()


def _attach_motion(source: str, folder: Path, index: dict[str, Any], parts: dict[str, _Part],
                   motion_adapter: str | None, variant: str, dtype: torch.dtype) -> Any:
    """Make the UNet part an AnimateDiff ``UNetMotionModel`` where the family asks for it: a Stable Diffusion UNet
    (an SD folder, or an AnimateDiff folder saved with a ``UNet2DConditionModel``) joined with its motion adapter,
    or an AnimateDiff UNet whose motion modules ``motion_adapter`` replaces. The adapter is checked first (its
    own files against the config they imply, every extra key named); returns it (None when nothing is joined)."""
    from .animatediff.adapters import (
        adapter_problems,
        motion_unet_config,
        resolve_motion_adapter,
        unet2d_config_of,
    )

    family, unet_class = model_family(index), index["unet"][1]
    error: Callable[[str], ModelLoadError] = _adapter_error
    if motion_adapter is not None:
        if family == "text2video":
            raise _adapter_error(f"motion_adapter: the model {source!r} is a ModelScope-style text-to-video model "
                                 f"({unet_class}); motion adapters extend Stable Diffusion 1.5 / AnimateDiff "
                                 "models only")
        motion = resolve_motion_adapter(motion_adapter, _adapter_error, variant, dtype)
    elif family == "sd":
        raise _adapter_error(f"the model {source!r} is a Stable Diffusion image model ({index.get('_class_name')}): "
                             "set motion_adapter to an AnimateDiff motion module (a MotionAdapter folder, or a file "
                             "such as mm_sd_v15_v2.ckpt) to make it a text-to-video model")
    elif family == "animatediff" and unet_class == "UNet2DConditionModel":
        if "motion_adapter" not in index or not (folder / "motion_adapter").is_dir():
            raise ModelLoadError(f"model folder {str(folder)!r}: its unet is a UNet2DConditionModel and it has no "
                                 "motion_adapter/ folder; give one as motion_adapter")
        error = ModelLoadError
        motion = resolve_motion_adapter(str(folder / "motion_adapter"), error, variant, dtype)
    else:
        return None
    unet_config = read_config(folder / "unet" / "config.json", folder, ModelLoadError)
    base = unet2d_config_of(unet_config) if unet_class == "UNetMotionModel" else unet_config
    import diffusers

    part = parts["unet"]
    drop = (lambda key: None if ".motion_modules." in key else key) if unet_class == "UNetMotionModel" else None
    own = _compose(part.rename if not isinstance(part.rename, dict) else None, drop)
    where = f"unet/ ({part.weights.describe()})"

    def own_problems(module: Any, only: Callable[[str], bool] | None) -> list[str]:
        return check_weight_set(part.weights, module, where, own, part.fit, part.infos, only)

    def motion_in(key: str) -> bool:
        return ".motion_modules." in key

    ours, theirs = list(base.get("block_out_channels", ())), list(motion.config.get("block_out_channels", ()))
    try:
        if ours != theirs:
            raise ValueError(f"the motion adapter {motion.label!r} is made for a UNet with block channels {theirs}, "
                             f"and the UNet of {source!r} has {ours}: it belongs to another model family (an SDXL "
                             "motion module on an SD 1.5 model, for instance)")
        config = motion_unet_config(base, motion.config)
    except ValueError as exc:
        # Blame the UNet's own files when they do not fit their config either (a checkpoint with other configs).
        problems = own_problems(build_on_meta(lambda: diffusers.UNet2DConditionModel.from_config(base)), None)
        if problems:
            raise ModelLoadError(f"could not load the model {str(folder)!r}: " + "; ".join(problems)) from None
        message = str(exc) if ours != theirs else (f"the motion adapter {motion.label!r} does not fit the UNet of "
                                                   f"{source!r}: {exc}")
        raise error(message) from None
    module = build_on_meta(lambda: diffusers.UNetMotionModel.from_config(config))
    problems = own_problems(module, lambda key: not motion_in(key))
    if problems:
        raise ModelLoadError(f"could not load the model {str(folder)!r}: " + "; ".join(problems))
    problems = adapter_problems(motion, module)
    if problems:
        raise error("; ".join(problems))
    rename: dict[Path, Any] = {f: own for f in part.weights.files}
    rename.update({f: motion.rename for f in motion.weights.files})
    part.weights = WeightSet(part.weights.folder, part.weights.variant, part.weights.format,
                             part.weights.files + motion.weights.files)
    part.infos = {**part.infos, **motion.infos}
    if part.disk_bytes is not None:
        part.disk_bytes += motion.weights.nbytes
    part.rename = rename
    part.build = lambda: diffusers.UNetMotionModel.from_config(config)
    part.module = module  # built on meta and checked: _build_parts keeps it
    return motion


def _single_checkpoint(source: str, unet: str | None) -> Path | None:
    """The single Stable Diffusion checkpoint file ``source`` names (None: a folder or a builtin)."""
    if source.startswith("builtin:"):
        return None
    path = Path(source).expanduser()
    if not (path.is_file() or path.is_symlink()) or path.suffix.lower() not in _SINGLE_FILE_SUFFIXES:
        return None
    if unet is not None:
        raise _unet_error(f"unet replaces the UNet3D of a model folder; the source {source!r} is a single checkpoint "
                          "file (give a diffusers text-to-video folder as source to use unet)")
    check_file(path, ModelLoadError)
    if path.suffix.lower() == ".pkl":
        raise ModelLoadError(f"{source!r}: .pkl files are not read; use .safetensors, or .ckpt/.pth/.bin (read "
                             "through torch.load(weights_only=True))")
    return path


def _compose(first: Callable[[str], str | None] | None,
             then: Callable[[str], str | None] | None) -> Callable[[str], str | None] | None:
    """``then(first(key))`` (None stays None): a file's own layout translated, then the part's usual renames."""
    if first is None or then is None:
        return first or then

    def rename(key: str) -> str | None:
        middle = first(key)
        return None if middle is None else then(middle)
    return rename


def _plan_single_file(source: str, path: Path, config: str | None) -> tuple[Path, list[FolderFile],
                                                                           dict[str, Any], dict[str, _Part]]:
    """Plan a single Stable Diffusion checkpoint: its configs come from ``config`` (a diffusers folder, checked
    like a model folder; its weights are not read) or the shipped SD 1.5 folder; each of the UNet, VAE and text
    encoder reads its tensors from the one file, renamed from LDM's layout (``animatediff.ldm_files``)."""
    from .animatediff.adapters import unet2d_config_of
    from .animatediff.ldm_files import LDM_PREFIXES, fit_ldm, is_ldm_checkpoint, ldm_renamer
    from .animatediff.motion_files import classify_keys
    from .animatediff.shipped import SD15_CONFIG_DIR

    error: Callable[[str], ModelLoadError] = _config_error if config else ModelLoadError
    folder = Path(config).expanduser() if config else SD15_CONFIG_DIR
    if not folder.is_dir():
        raise _config_error(f"config {config!r} is not a folder; give a diffusers folder holding the checkpoint's "
                            "configs (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)")
    folder = folder.resolve()
    files = scan_folder(folder, error)
    index = _read_index(folder, error)
    for relative in config_files(files):
        read_config(folder / relative, folder, error)
    family = model_family(index)
    if family == "text2video":
        raise _config_error(f"config {str(folder)!r} describes a {index.get('_class_name')} model (a UNet3D); a "
                            "single checkpoint is a Stable Diffusion 1.5 model: give an SD 1.5 or AnimateDiff "
                            "folder's configs")
    fmt = "safetensors" if path.suffix.lower() in SAFETENSORS_SUFFIXES else "pickle"
    weights = WeightSet(path.parent, None, fmt, (path,))
    infos, problems = inspect_weight_set(weights, f"the checkpoint {path.name}")
    if problems:
        raise ModelLoadError(_not_a_checkpoint(source, "; ".join(problems)))
    tensors = infos[path]
    if not is_ldm_checkpoint(tensors):
        kind = classify_keys(tensors)
        what = {"original": "it is an AnimateDiff motion module: give it as motion_adapter",
                "diffusers": "it is a diffusers MotionAdapter state dict: give it as motion_adapter",
                "lora": "it is a LoRA: load it with load_lora",
                "modelscope": "it is a ModelScope UNet3D"}.get(kind, "it has no model.diffusion_model.* keys")
        raise ModelLoadError(_not_a_checkpoint(source, what))
    missing = [c for c, prefix in LDM_PREFIXES.items() if not any(k.startswith(prefix) for k in tensors)]
    if missing:
        raise ModelLoadError(f"the checkpoint {source!r} has no {', '.join(missing)} ("
                             f"{', '.join(LDM_PREFIXES[c] + '*' for c in missing)} keys); a single checkpoint must "
                             "hold the UNet, the VAE and the CLIP text encoder")
    parts: dict[str, _Part] = {}
    for component in _WEIGHT_COMPONENTS:
        part_config = read_config(folder / component / "config.json", folder, error)
        if component == "unet" and index["unet"][1] == "UNetMotionModel":
            part_config = unet2d_config_of(part_config)
        try:
            rename = ldm_renamer(component, tensors, part_config)
        except Exception as exc:
            raise ModelLoadError(f"the checkpoint {source!r}: its {component} ({LDM_PREFIXES[component]}*) does not "
                                 f"convert from LDM's layout: {type(exc).__name__}: {exc}") from None
        own = sum(info.numel * _ITEMSIZE.get(info.dtype, 4) for key, info in tensors.items() if rename(key))
        parts[component] = _Part(component, weights, infos, config=part_config, rename=rename,
                                 fit=fit_ldm if component == "vae" else None, disk_bytes=own)
    renames = {c: p.rename for c, p in parts.items()}
    try:  # the VAE and text encoder against their configs now (meta builds); the UNet once the adapter joins it
        _build_parts(folder, index, {c: parts[c] for c in ("vae", "text_encoder")}, None)
    except ModelLoadError as first:
        found = first
        for component, part in parts.items():  # every part's problems in one message: check the UNet too
            part.module, part.rename = None, renames[component]
        try:
            _build_parts(folder, index, parts, None)
        except ModelLoadError as every:
            found = every
        raise _single_file_error(found, config) from None
    return folder, files, index, parts


def _not_a_checkpoint(source: str, why: str) -> str:
    """The refusal of a single file ``source`` that is not a Stable Diffusion checkpoint, with what loads instead."""
    return (f"{source!r} is a single weight file but not a Stable Diffusion 1.5 checkpoint in LDM's layout ({why}). "
            "A single checkpoint loads when it holds the UNet, the VAE and the CLIP text encoder "
            "(model.diffusion_model.*, first_stage_model.*, cond_stage_model.transformer.*), with motion_adapter; a "
            "UNet3D file (ModelScope's original layout or diffusers') loads with a diffusers text-to-video folder as "
            "source and this file as unet. See docs/models.md")


def _single_file_error(exc: ModelLoadError, config: str | None) -> ModelLoadError:
    """A single checkpoint's parts against configs that do not describe them: the configs are what to change, so
    the error names ``config`` (or ``source`` with the shipped configs) and says so."""
    if exc.input != "source":
        return exc
    where = f"the configs in {config!r}" if config else "the shipped Stable Diffusion 1.5 configs"
    return ModelLoadError(f"{exc} (checked against {where}; give the checkpoint's own configs as config: a diffusers "
                          "folder of the same architecture)", input="config" if config else "source")


def input_fingerprint(value: str | None) -> Any:
    """What identifies the content of a file or folder input (``motion_adapter``, ``config``) for cache keys: the
    size and mtime of the file, or of every file of the folder (None when it cannot be read; the load says why)."""
    if not value:
        return None
    path = Path(value).expanduser()
    try:
        if path.is_dir():
            folder = path.resolve()
            return [str(folder), [list(e) for e in _fingerprint(scan_folder(folder, ModelLoadError))]]
        info = path.stat()
    except (OSError, ModelLoadError):
        return [value, None]
    return [str(path.resolve()), info.st_size, info.st_mtime_ns]


def load_model(source: str, device: str = "auto", dtype: str = "float32", memory_format: str = "contiguous",
               compile: bool = False, max_bytes: int | None = None, variant: str = "auto", unet: str | None = None,
               unet_config: str | None = None, motion_adapter: str | None = None,
               config: str | None = None) -> Handles:
    """Load ``source`` (a diffusers text-to-video folder, an AnimateDiff or Stable Diffusion 1.5 folder, a single
    Stable Diffusion 1.5 checkpoint file, or a ``builtin:`` model) as ``(UNet3D, VAE, TextEncoder, Scheduler)``
    handles on ``device`` in ``dtype``.

    ``variant`` picks the weight files per component (``auto``, ``default``, ``fp16``, ``bf16``; see
    ``model_files``). ``unet`` replaces the folder's UNet3D by a single weight file (ModelScope's original
    layout or diffusers', ``.safetensors`` or a pickle read through ``torch.load(weights_only=True)``) or an
    sd-webui-text2video folder holding ``text2video_pytorch_model.pth``; its config is ``unet_config`` (a folder
    with ``config.json``, or the file) or else the first that fits among the source folder's ``unet/config.json``
    and the shipped ModelScope 1.7B config.

    **AnimateDiff** (the UNet handle's module is a diffusers ``UNetMotionModel``): an ``AnimateDiffPipeline`` folder
    loads as it is; a Stable Diffusion 1.5 folder (``StableDiffusionPipeline``) or single checkpoint needs
    ``motion_adapter``, a ``MotionAdapter`` folder or a motion-module file in AnimateDiff's original layout
    (``mm_sd_v15_v2.ckpt``, read through ``weights_only``, or ``.safetensors``); on an AnimateDiff folder
    ``motion_adapter`` replaces its motion modules. A single checkpoint (``.safetensors`` or a pickle, in the
    original LDM key layout) is described by ``config``, a diffusers folder holding its configs (weights there are
    not read), by default the Stable Diffusion 1.5 configs shipped with reelgraph (``nodes/animatediff/sd15``).

    ``memory_format="channels_last"`` stores the 2-D convolution weights of the UNet3D and the VAE
    channels-last; ``compile=True`` wraps the UNet3D's forward in ``torch.compile`` (the first call compiles).
    Both are optional speed-ups whose worth depends on the hardware: ``bench/optim_flags.py`` measures them.

    The folder is checked before any library reads it (links, special files, remote-code keys, allowed classes;
    see the module docstring), then every component's weight files against its config. ``max_bytes`` (the run's
    memory limit; None: no limit) refuses a model whose configs describe more bytes than that, before anything is
    allocated.

    The result is cached per process: loading the same unchanged source with the same settings returns the
    very same handles (treat their modules as read-only). Raises ``ModelLoadError`` for a missing, malformed or
    unsafe folder (all its problems in one message), unknown builtins and unknown settings, with ``input`` naming
    the input at fault, and ``ModelTooLarge`` for a model over ``max_bytes``.
    """
    if not isinstance(source, str) or not source:
        raise ModelLoadError(f"model source must be a non-empty string, got {source!r}")
    resolved_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype)
    if memory_format not in _MEMORY_FORMATS:
        raise ModelLoadError(f"memory_format must be one of {_MEMORY_FORMATS}, got {memory_format!r}")
    if variant not in VARIANTS:
        raise ModelLoadError(f"variant must be one of {VARIANTS}, got {variant!r}")
    single = _single_checkpoint(source, unet)
    if single is not None:
        folder, files, index, parts = _plan_single_file(source, single, config)
    else:
        if config is not None:
            raise _config_error(f"config describes a single checkpoint file; the source {source!r} is a model "
                                "folder, whose own configs are used")
        folder = _resolve_folder(source)
        files = _scan(folder)
        index = _read_index(folder)
        _check_configs(folder, files)
    unet_path, unet_print = _resolve_unet_file(unet) if unet else (None, None)
    if single is None:
        parts, problems = _plan(folder, index, files, variant, torch_dtype, unet_path)
        if problems is not None:
            raise _report_all(folder, index, parts, problems, unet_path, unet_config)
    try:
        motion = _attach_motion(source, folder, index, parts, motion_adapter, variant, torch_dtype)
    except ModelLoadError as exc:
        raise exc if single is None else _single_file_error(exc, config) from None
    # The last element is what changes when files are edited in place (the folder's, the motion adapter's, the
    # single checkpoint's): a changed model replaces its stale cache entry.
    contents: Any = _fingerprint(files)
    if motion is not None or single is not None:
        contents = (contents, None if motion is None else motion.fingerprint,
                    None if single is None else tuple(input_fingerprint(str(single))))
    key = (source, str(folder), resolved_device, str(torch_dtype), memory_format, bool(compile), variant,
           unet_print, unet_config, motion_adapter, tuple((c, p.weights.files) for c, p in parts.items()), contents)
    with _cache_lock:
        cached = _cache.get(key)
        if cached is not None:
            return cached  # already in memory: nothing new is allocated
        unet_configs = _unet_config_candidates(folder, unet_config) if unet_path is not None else None
        _estimate_bytes(folder, index, parts, torch_dtype, max_bytes, source, unet_configs)
        try:
            _build_parts(folder, index, parts, unet_configs)
        except ModelLoadError as exc:
            raise exc if single is None else _single_file_error(exc, config) from None
        handles = _load_folder(folder, source, index, parts, resolved_device, torch_dtype)
        _apply_speedups(handles, memory_format, compile)
        # Drop stale entries for the same source/folder/settings (the files changed).
        for old in [k for k in _cache if k[:-1] == key[:-1]]:
            del _cache[old]
        _cache[key] = handles
        return handles
