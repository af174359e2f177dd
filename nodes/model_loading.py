"""Load a text-to-video model (UNet3D + VAE + CLIP text encoder + scheduler) into value handles.

Sources are either a diffusers folder in the ModelScope ``TextToVideoSDPipeline`` layout (a
``model_index.json`` next to ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/`` and ``scheduler/``) or
``builtin:tiny`` (see ``tiny_models``). Weights are read from safetensors only: pickle checkpoints
(``.bin``/``.pt``/``.ckpt``) can run code when unpickled, so a folder that only has those is refused with a
message saying how to convert it. Single-file checkpoints are refused too: diffusers' ``from_single_file``
has no conversion for ``UNet3DConditionModel`` or the text-to-video pipelines.

Loaded models are cached per process, keyed by the source id, the resolved folder, the device, the dtype and
the size and mtime of every file in the folder, so the same source is loaded once and an edited folder is
reloaded.

A model folder is data from a stranger, and nothing in it runs. Before any diffusers or transformers call
(see ``model_safety``):

* **Classes come from an allow-list per slot** (:data:`ALLOWED_CLASSES`): ``model_index.json`` may only name
  ``UNet3DConditionModel``, ``AutoencoderKL``, a CLIP text model, a CLIP tokenizer and one of the diffusers
  noise schedulers in ``values.SCHEDULER_CLASSES``. The allowed class is instantiated directly, never through
  an ``Auto*`` class that dispatches on the folder's content; transformers gets ``trust_remote_code=False``
  and every loader ``local_files_only=True``.
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
  folder that someone rewrites while it loads is out of its reach.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .model_safety import (
    FolderFile,
    ModelTooLarge,
    check_budget,
    check_class,
    config_files,
    module_bytes,
    read_config,
    scan_folder,
    weight_file_bytes,
)
from .values import SCHEDULER_CLASSES, VAE, Scheduler, TextEncoder, UNet3D

if TYPE_CHECKING:
    import torch

__all__ = [
    "ALLOWED_CLASSES",
    "ModelLoadError",
    "ModelTooLarge",
    "clear_model_cache",
    "load_model",
    "resolve_device",
    "resolve_dtype",
    "source_fingerprint",
]

_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_WEIGHT_COMPONENTS = ("unet", "vae", "text_encoder")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_SINGLE_FILE_SUFFIXES = (".safetensors", *_PICKLE_SUFFIXES)
_DTYPES = ("float32", "float16", "bfloat16")
_MEMORY_FORMATS = ("contiguous", "channels_last")

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
#: The weight file each weighted component loads (or its shards ``<stem>-NNNNN-of-NNNNN.safetensors``).
_WEIGHT_FILES = {"unet": "diffusion_pytorch_model.safetensors", "vae": "diffusion_pytorch_model.safetensors",
                 "text_encoder": "model.safetensors"}
#: Bytes a scheduler holds per training timestep (a handful of float64 tables), for the memory estimate.
_SCHEDULER_BYTES_PER_STEP = 64

Handles = tuple[UNet3D, VAE, TextEncoder, Scheduler]

_cache: dict[tuple[Any, ...], Handles] = {}
_cache_lock = threading.Lock()


class ModelLoadError(ValueError):
    """A model source is missing, malformed, unsafe (pickle-only weights) or of an unsupported kind."""


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
        from .tiny_models import TINY_RANDOM_SOURCE, TINY_SOURCE, WeightsMismatch, builtin_model

        try:
            return builtin_model(source).resolve()
        except KeyError:
            raise ModelLoadError(f"unknown builtin model {source!r}; the builtins are {TINY_SOURCE!r} and "
                                 f"{TINY_RANDOM_SOURCE!r}") from None
        except WeightsMismatch as exc:
            raise ModelLoadError(f"{source}: {exc}") from None
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix.lower() in _SINGLE_FILE_SUFFIXES:
            raise ModelLoadError(
                f"{source!r} is a single-file checkpoint. Single-file loading is not supported for text-to-video "
                "models: diffusers' from_single_file has no conversion for UNet3DConditionModel or "
                "TextToVideoSDPipeline. Use a diffusers folder (model_index.json with unet/, vae/, "
                "text_encoder/, tokenizer/, scheduler/) instead."
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


def _read_index(folder: Path) -> dict[str, Any]:
    """Read and validate ``model_index.json``: every component present, each naming an allowed class."""
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise ModelLoadError(f"{folder} is not a diffusers model folder: model_index.json is missing")
    index = read_config(index_path, folder, ModelLoadError)
    missing = [c for c in _COMPONENTS if not isinstance(index.get(c), list) or len(index[c]) != 2]
    if missing:
        raise ModelLoadError(f"{index_path} lacks the component(s) {missing}; a text-to-video model needs all of "
                             f"{list(_COMPONENTS)}")
    for component in _COMPONENTS:
        library, classes = ALLOWED_CLASSES[component]
        name = index[component][1]
        if component == "scheduler" and name is None:
            continue  # the class comes from scheduler_config.json's _class_name (checked when it is read)
        check_class(f"model folder {str(folder)!r}: model_index.json", component, name, classes, ModelLoadError)
        if index[component][0] != library:
            raise ModelLoadError(f"model folder {str(folder)!r}: model_index.json: the {component} slot names the "
                                 f"library {index[component][0]!r}; {name} comes from {library!r}")
    for component in _COMPONENTS:
        if not (folder / component).is_dir():
            raise ModelLoadError(f"{folder} lacks the {component}/ folder named in model_index.json")
    return index


def _check_weights(folder: Path) -> None:
    """Refuse components whose weights exist only in pickle formats, or not at all."""
    for component in _WEIGHT_COMPONENTS:
        sub = folder / component
        files = [p for p in sub.iterdir() if p.is_file()]
        if any(p.name.endswith(".safetensors") for p in files):
            continue
        pickles = sorted(p.name for p in files if p.suffix.lower() in _PICKLE_SUFFIXES)
        if pickles:
            raise ModelLoadError(
                f"{sub} has only pickle weights ({', '.join(pickles)}). reelgraph loads safetensors only, because "
                "unpickling a checkpoint can run arbitrary code. Convert it once, e.g. "
                "safetensors.torch.save_file(torch.load(path, weights_only=True), "
                "'diffusion_pytorch_model.safetensors') (model.safetensors for the text encoder)."
            )
        raise ModelLoadError(f"{sub} has no weight file (*.safetensors)")


def _fingerprint(files: list[FolderFile]) -> tuple[tuple[str, int, int], ...]:
    """Size and mtime of every file under the folder: a cheap change detector for the cache key."""
    return tuple((f.relative, f.size, f.mtime_ns) for f in files)


def source_fingerprint(source: str) -> list[Any]:
    """What identifies a model source's current content: the builtin's version, or every file's size and mtime.

    Cheap (no weights are read); the engine mixes it into ``load_model``'s cache key so that a folder
    whose files change is loaded again. A folder the checks refuse has no fingerprint (``load_model`` says why).
    """
    if source.startswith("builtin:"):
        from .tiny_models import WeightsMismatch, builtin_model_version

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


def _estimate_bytes(folder: Path, index: dict[str, Any], files: list[FolderFile], dtype: torch.dtype,
                    limit: int | None, source: str) -> None:
    """Refuse (``ModelTooLarge``) a model whose configs describe more than ``limit`` bytes, before building it.

    Each network is built from its own config on the ``meta`` device (see ``model_safety.module_bytes``); a
    component counts as the larger of that and its weight files (the loader reads the whole file). The
    scheduler counts its per-timestep tables.
    """
    if limit is None:
        return
    import diffusers
    import transformers

    def diffusers_part(component: str) -> Any:
        cls = getattr(diffusers, index[component][1])
        config = cls.load_config(folder, subfolder=component, local_files_only=True)
        return lambda: cls.from_config(config)

    def text_part() -> Any:
        cls = getattr(transformers, index["text_encoder"][1])
        config = cls.config_class.from_pretrained(folder / "text_encoder", local_files_only=True)
        return lambda: cls(config)

    def estimate(component: str, build: Any) -> Any:
        def run(remaining: int | None) -> tuple[int, bool]:
            nbytes, complete = module_bytes(build, dtype, remaining)
            on_disk = weight_file_bytes(files, f"{component}/", (_WEIGHT_FILES[component],))
            return max(nbytes, on_disk), complete or on_disk > nbytes
        return run

    def scheduler(remaining: int | None) -> tuple[int, bool]:
        config = read_config(folder / "scheduler" / "scheduler_config.json", folder, ModelLoadError)
        steps = config.get("num_train_timesteps", 1000)
        return (int(steps) if isinstance(steps, int) and steps > 0 else 0) * _SCHEDULER_BYTES_PER_STEP, True

    try:
        parts = [("unet", estimate("unet", diffusers_part("unet"))), ("vae", estimate("vae", diffusers_part("vae"))),
                 ("text_encoder", estimate("text_encoder", text_part())), ("scheduler", scheduler)]
        check_budget(parts, limit, f"the model {source!r}")
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


def _load_folder(folder: Path, source: str, index: dict[str, Any], device: str, dtype: torch.dtype) -> Handles:
    """Load all five components of a validated folder onto ``device`` in ``dtype``."""
    import diffusers
    import transformers

    quiet_hf_libraries()

    def load_unet() -> Any:
        return diffusers.UNet3DConditionModel.from_pretrained(
            folder, subfolder="unet", use_safetensors=True, torch_dtype=dtype, local_files_only=True
        )

    def load_vae() -> Any:
        cls = getattr(diffusers, index["vae"][1])  # an allowed class: _read_index checked it
        return cls.from_pretrained(folder, subfolder="vae", use_safetensors=True, torch_dtype=dtype,
                                   local_files_only=True)

    def load_text_encoder() -> Any:
        cls = getattr(transformers, index["text_encoder"][1])
        return cls.from_pretrained(folder / "text_encoder", use_safetensors=True, dtype=dtype, local_files_only=True,
                                   trust_remote_code=False)

    def load_tokenizer() -> Any:
        cls = getattr(transformers, index["tokenizer"][1])
        return cls.from_pretrained(folder / "tokenizer", local_files_only=True, trust_remote_code=False)

    def load_scheduler() -> Scheduler:
        config = read_config(folder / "scheduler" / "scheduler_config.json", folder, ModelLoadError)
        class_name = index["scheduler"][1] or config.get("_class_name")
        check_class(f"model folder {str(folder)!r}: scheduler/scheduler_config.json", "scheduler", class_name,
                    SCHEDULER_CLASSES, ModelLoadError)
        handle = Scheduler(class_name=class_name, config=config, source=source)
        handle.create()  # fail now, not at sampling time, if the config is bad
        return handle

    unet = _load_component("unet", folder, load_unet)
    vae = _load_component("vae", folder, load_vae)
    text_encoder = _load_component("text_encoder", folder, load_text_encoder)
    tokenizer = _load_component("tokenizer", folder, load_tokenizer)
    scheduler = _load_component("scheduler", folder, load_scheduler)

    # A tokenizer folder with only vocab.json + merges.txt and no model_max_length loads with a huge
    # sentinel length; the text encoder's position table is the real limit.
    max_positions = int(getattr(text_encoder.config, "max_position_embeddings", 77))
    if not tokenizer.model_max_length or tokenizer.model_max_length > max_positions:
        tokenizer.model_max_length = max_positions

    modules = [unet, vae, text_encoder]
    for module in modules:
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


def load_model(source: str, device: str = "auto", dtype: str = "float32", memory_format: str = "contiguous",
               compile: bool = False, max_bytes: int | None = None) -> Handles:
    """Load ``source`` (a diffusers text-to-video folder or ``builtin:tiny``) as
    ``(UNet3D, VAE, TextEncoder, Scheduler)`` handles on ``device`` in ``dtype``.

    ``memory_format="channels_last"`` stores the 2-D convolution weights of the UNet3D and the VAE
    channels-last; ``compile=True`` wraps the UNet3D's forward in ``torch.compile`` (the first call compiles).
    Both are optional speed-ups whose worth depends on the hardware: ``bench/optim_flags.py`` measures them.

    The folder is checked before any library reads it (links, special files, remote-code keys, allowed classes;
    see the module docstring). ``max_bytes`` (the run's memory limit; None: no limit) refuses a model whose
    configs describe more bytes than that, before anything is allocated.

    The result is cached per process: loading the same unchanged source with the same settings returns the
    very same handles (treat their modules as read-only). Raises ``ModelLoadError`` for a missing, malformed or
    unsafe folder, pickle-only weights, single-file checkpoints, unknown builtins and unknown settings, and
    ``ModelTooLarge`` for a model over ``max_bytes``.
    """
    if not isinstance(source, str) or not source:
        raise ModelLoadError(f"model source must be a non-empty string, got {source!r}")
    folder = _resolve_folder(source)
    files = _scan(folder)
    index = _read_index(folder)
    _check_configs(folder, files)
    _check_weights(folder)
    resolved_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype)
    if memory_format not in _MEMORY_FORMATS:
        raise ModelLoadError(f"memory_format must be one of {_MEMORY_FORMATS}, got {memory_format!r}")
    key = (source, str(folder), resolved_device, str(torch_dtype), memory_format, bool(compile), _fingerprint(files))
    with _cache_lock:
        cached = _cache.get(key)
        if cached is not None:
            return cached  # already in memory: nothing new is allocated
        _estimate_bytes(folder, index, files, torch_dtype, max_bytes, source)
        handles = _load_folder(folder, source, index, resolved_device, torch_dtype)
        _apply_speedups(handles, memory_format, compile)
        # Drop stale entries for the same source/folder/settings (the files changed).
        for old in [k for k in _cache if k[:-1] == key[:-1]]:
            del _cache[old]
        _cache[key] = handles
        return handles
