"""ControlNet for the UNet3D: loading 2D ``ControlNetModel`` s, checking they fit a UNet3D, and computing the
residuals a sampler adds to the UNet3D at each step.

How a 2D ControlNet steers a video UNet (what diffusers' AnimateDiff ControlNet pipeline does): the UNet3D
folds frames into the batch as ``b * F + f``, so running the ControlNet on the noisy latents folded the same
way (``[B*F, C, h, w]``), with the text embeddings repeated per frame and one control image per frame, gives
down-block and mid-block residuals whose shapes the UNet3D accepts as they are. With classifier-free
guidance both halves (negative and positive) get their residuals, from the same control frames. Several
controls are run one after the other and their residuals summed, each with its own scale.

Control frames enter the ControlNet as float RGB in ``[0, 1]`` at the output resolution, as the diffusers
ControlNet pipelines feed them; frames of another size are resized (bilinear, antialiased) once per run,
and single-channel frames are repeated to the ControlNet's channels.

Loaded ControlNets are cached per process like the text-to-video models (same source, device, dtype and
file sizes and mtimes: same handle), and never modified.

A ControlNet source is data, checked like a model folder before diffusers reads it (``model_safety``; see
``model_loading``'s docstring): the folder's entries (links, special files), configs without ``auto_map`` /
``custom_pipeline``, the class ``ControlNetModel`` only, and, with a memory limit, the size its config
describes (built on the ``meta`` device) before any real module is built. The config beside a single weight
file follows the same link rule as a folder's files. Weights are read like a model folder's (``model_files``):
safetensors streamed, pickles only through ``torch.load(weights_only=True)``, checked against the module built
on the meta device and loaded into it, so a load never allocates random weights nor holds a second copy.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .model_safety import (
    FolderFile,
    ModelTooLarge,
    check_budget,
    check_file,
    config_files,
    module_bytes,
    read_config,
    scan_folder,
)
from .values import Conditioning, Control, ControlNet, UNet3D

if TYPE_CHECKING:
    import torch

__all__ = [
    "ControlError",
    "ControlNetLoadError",
    "PreparedControls",
    "check_compatible",
    "clear_controlnet_cache",
    "controlnet_fingerprint",
    "load_controlnet",
    "prepare_controls",
]

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
_cache: dict[tuple[Any, ...], ControlNet] = {}
_cache_lock = threading.Lock()


class ControlNetLoadError(ValueError):
    """A ControlNet source is missing, malformed, unsafe (a refused pickle) or not a ``ControlNetModel``."""


class ControlError(ValueError):
    """A control cannot be applied: the ControlNet does not fit the UNet3D, or its frames do not fit the video."""


# --------------------------------------------------------------------------------------------- loading


def _builtins() -> dict[str, tuple[Any, Any]]:
    """The builtin ControlNets: source id -> (function giving its content id for cache keys, function giving
    its folder: the shipped one, sha256-checked, or one built on first use)."""
    from .animatediff.tiny_controlnet import (
        TINY_ANIMATEDIFF_CONTROLNET_NAME,
        TINY_ANIMATEDIFF_CONTROLNET_SOURCE,
        ensure_tiny_animatediff_controlnet,
    )
    from .tiny_models import controlnet_builtins

    builtins = {source: (version, folder) for source, (folder, version) in controlnet_builtins().items()}
    builtins[TINY_ANIMATEDIFF_CONTROLNET_SOURCE] = ((lambda: TINY_ANIMATEDIFF_CONTROLNET_NAME),
                                                    ensure_tiny_animatediff_controlnet)
    return builtins


def _resolve(source: str) -> Path:
    """Map a source id to a folder or a single ``.safetensors`` file."""
    if source.startswith("builtin:"):
        from .tiny_models import WeightsMismatch

        builtins = _builtins()
        if source not in builtins:
            raise ControlNetLoadError(f"unknown builtin ControlNet {source!r}; the builtins are "
                                      f"{', '.join(repr(name) for name in builtins)}")
        try:
            return builtins[source][1]().resolve()
        except WeightsMismatch as exc:
            raise ControlNetLoadError(f"{source}: {exc}") from None
    path = Path(source).expanduser()
    if not path.exists():
        raise ControlNetLoadError(f"ControlNet {source!r} does not exist")
    return path.resolve()


def _config_candidates(path: Path) -> list[Path]:
    """Where a single-file ControlNet's config may be: ``<stem>.json``, then ``config.json`` beside it."""
    return [path.with_suffix(".json"), path.parent / "config.json"]


def _files_fingerprint(path: Path) -> tuple[tuple[str, int, int], ...]:
    """Size and mtime of a single file and its config candidates, or of every file in a folder: the cache's
    change detector."""
    if path.is_file():
        files = [path, *(c for c in _config_candidates(path) if c.is_file())]
        return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return tuple((str(path / f.relative), f.size, f.mtime_ns) for f in _scan(path))


def _scan(folder: Path) -> list[FolderFile]:
    """Check every entry of a ControlNet folder (links, special files, count) and list its files."""
    return scan_folder(folder, ControlNetLoadError)


def controlnet_fingerprint(source: str) -> list[Any]:
    """What identifies a ControlNet source's content without reading weights (for the node's cache key)."""
    if source.startswith("builtin:"):
        from .tiny_models import WeightsMismatch

        entry = _builtins().get(source)
        if entry is None:
            return [source, None]
        try:
            return [source, entry[0]()]
        except WeightsMismatch:  # load_controlnet says why
            return [source, None]
    path = Path(source).expanduser()
    if not path.exists():
        return [source, None]
    try:
        return [str(path.resolve()), [list(e) for e in _files_fingerprint(path.resolve())]]
    except ControlNetLoadError:  # load_controlnet says why
        return [str(path.resolve()), None]


def _read_config(path: Path) -> dict[str, Any]:
    """Read a ``ControlNetModel`` config JSON, refusing remote-code keys and other model classes."""
    config = read_config(path, path.parent, ControlNetLoadError)
    cls = config.get("_class_name", "ControlNetModel")
    if cls != "ControlNetModel":
        raise ControlNetLoadError(f"{path} describes a {cls}; only ControlNetModel (SD-style 2D ControlNets) is "
                                  "supported")
    return config


def _check_size(build: Any, files_bytes: int, dtype: torch.dtype, limit: int | None, where: Path) -> None:
    """Refuse (``ModelTooLarge``) a ControlNet whose config (built on the meta device) or weight files exceed
    ``limit``, before any real module is built; a config that cannot be built is a ``ControlNetLoadError``."""
    def estimate(remaining: int | None) -> tuple[int, bool]:
        nbytes, complete = module_bytes(build, dtype, remaining)
        return max(nbytes, files_bytes), complete or files_bytes > nbytes

    try:
        check_budget([("weights", estimate)], limit, f"the ControlNet {str(where)!r}")
    except ModelTooLarge:
        raise
    except Exception as exc:
        raise ControlNetLoadError(f"the config of {where} does not describe a ControlNet that can be built: "
                                  f"{type(exc).__name__}: {exc}") from exc


def _load_checked(weights: Any, config: dict[str, Any], dtype: torch.dtype, where: str, infos: Any = None) -> Any:
    """Build the ``ControlNetModel`` of ``config`` on the meta device, check the file set against it (every
    problem at once) and fill it from the files, cast once to ``dtype``: no random weights, no second copy."""
    from diffusers import ControlNetModel

    from .model_files import build_on_meta, check_weight_set, load_weight_set
    from .weights import WeightsError

    try:
        module = build_on_meta(lambda: ControlNetModel.from_config(config))
    except Exception as exc:
        raise ControlNetLoadError(f"the config of {where} does not describe a ControlNet that can be built: "
                                  f"{type(exc).__name__}: {exc}") from exc
    problems = check_weight_set(weights, module, where, infos=infos)
    if problems:
        raise ControlNetLoadError(f"could not load the ControlNet {where}: " + "; ".join(problems))
    try:
        return load_weight_set(weights, module, dtype)
    except (WeightsError, RuntimeError) as exc:
        raise ControlNetLoadError(f"could not load the ControlNet in {where}: {type(exc).__name__}: {exc}") from exc


def _load_folder(folder: Path, dtype: torch.dtype, max_bytes: int | None = None) -> Any:
    """Load a diffusers ControlNet folder (safetensors, else a pickle read through ``torch.load(weights_only=True)``;
    the variant stored in ``dtype`` when there is one), after checking its entries and configs and, with
    ``max_bytes``, the size its config describes."""
    from diffusers import ControlNetModel

    from .model_files import choose_weight_set, find_weight_sets, inspect_weight_set

    entries = _scan(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ControlNetLoadError(f"{folder} is not a diffusers ControlNet folder: config.json is missing")
    for relative in config_files(entries):
        read_config(folder / relative, folder, ControlNetLoadError)
    config = _read_config(config_path)
    present = {f.relative for f in entries if "/" not in f.relative}
    sets, problems = find_weight_sets(folder, "diffusers", present)
    chosen, problem = choose_weight_set(sets, "auto", dtype, str(folder))
    if chosen is None:
        raise ControlNetLoadError("; ".join([*problems, problem or f"{folder} has no weight file"]))
    infos, problems = inspect_weight_set(chosen, str(folder))
    if problems:
        raise ControlNetLoadError("; ".join(problems))
    _check_size(lambda: ControlNetModel.from_config(config), chosen.nbytes, dtype, max_bytes, folder)
    return _load_checked(chosen, config, dtype, str(folder), infos)


def _load_single_file(path: Path, dtype: torch.dtype, max_bytes: int | None = None) -> Any:
    """Load a single-file ControlNet in diffusers key layout, with its config beside it.

    Weight files carry no architecture, so the config comes from ``<stem>.json`` or ``config.json`` next to
    the file. The weights are read by :mod:`reelgraph.nodes.weights` (pickles through
    ``torch.load(weights_only=True)``) into a module built on the meta device.
    """
    from diffusers import ControlNetModel

    from .model_files import WeightSet, inspect_weight_set

    candidates = _config_candidates(path)
    config_path = next((c for c in candidates if c.is_file()), None)
    if config_path is None:
        raise ControlNetLoadError(f"the single-file ControlNet {path} needs its diffusers config beside it, as "
                                  f"{candidates[0].name} or config.json")
    check_file(config_path, ControlNetLoadError)
    config = _read_config(config_path)
    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    _check_size(lambda: ControlNetModel.from_config(kwargs), path.stat().st_size, dtype, max_bytes, path)
    weights = WeightSet(path.parent, None, "safetensors" if path.suffix.lower() == ".safetensors" else "pickle",
                        (path,))
    infos, problems = inspect_weight_set(weights, str(path))
    if problems:
        raise ControlNetLoadError("; ".join(problems))
    if any(k.startswith(("control_model.", "input_hint_block.")) for k in infos[path]):
        raise ControlNetLoadError(
            f"{path} is in the original (LDM) ControlNet layout; convert it once to a diffusers folder (e.g. "
            "diffusers' ControlNetModel.from_single_file(...).save_pretrained(folder)) and load the folder"
        )
    return _load_checked(weights, kwargs, dtype, f"{path} (config {config_path.name})", infos)


def load_controlnet(source: str, device: str = "auto", dtype: str = "float32",
                    max_bytes: int | None = None) -> ControlNet:
    """Load a ``ControlNetModel`` from a diffusers folder, a single weight file (config beside it) or a builtin
    (``builtin:tiny``, trained; ``builtin:tiny-random``; ``builtin:tiny-animatediff-controlnet``) onto ``device``
    in ``dtype``; cached per process (treat the module as read-only).

    Raises ``ControlNetLoadError`` for a missing, malformed or unsafe source (see the module docstring), a
    refused pickle, weights that do not fit the config, or another class, and ``ModelTooLarge`` when its config
    describes more than ``max_bytes`` (the run's memory limit; None: no limit).
    """
    from .model_loading import quiet_hf_libraries, resolve_device, resolve_dtype

    if not isinstance(source, str) or not source:
        raise ControlNetLoadError(f"ControlNet source must be a non-empty string, got {source!r}")
    path = _resolve(source)
    if path.is_file() and not path.name.endswith((".safetensors", *_PICKLE_SUFFIXES)):
        raise ControlNetLoadError(f"{path} is neither a diffusers ControlNet folder nor a weight file (.safetensors, "
                                  "or .bin/.pt/.pth read through torch.load(weights_only=True))")
    resolved_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype)
    key = (source, str(path), resolved_device, str(torch_dtype), _files_fingerprint(path))
    with _cache_lock:
        cached = _cache.get(key)
        if cached is not None:
            return cached
        quiet_hf_libraries()
        if path.is_file():
            module = _load_single_file(path, torch_dtype, max_bytes)
        else:
            module = _load_folder(path, torch_dtype, max_bytes)
        module.to(resolved_device)
        module.eval()
        module.requires_grad_(False)
        handle = ControlNet(module=module, source=source)
        for old in [k for k in _cache if k[:4] == key[:4]]:
            del _cache[old]
        _cache[key] = handle
        return handle


def clear_controlnet_cache() -> None:
    """Forget every cached ControlNet (tests, memory)."""
    with _cache_lock:
        _cache.clear()


# ------------------------------------------------------------------------------------------ compatibility


def _down_residual_channels(module: Any) -> list[tuple[str, int]]:
    """(where, channels) of each down-path residual of a UNet (2D ControlNet or UNet3D), in order.

    Both fold their residuals the same way: the input conv, then each down block's resnets and downsampler.
    """
    out = [("conv_in", int(module.conv_in.out_channels))]
    for b, block in enumerate(module.down_blocks):
        for r, resnet in enumerate(block.resnets):
            out.append((f"down block {b} resnet {r}", int(resnet.out_channels)))
        for d, down in enumerate(block.downsamplers or []):
            out.append((f"down block {b} downsampler {d}", int(down.out_channels)))
    return out


def check_compatible(controlnet: ControlNet, unet: UNet3D) -> None:
    """Raise ``ControlError`` unless ``controlnet``'s residuals can be added to ``unet``'s, block by block.

    Checks, before anything runs: the latent channels, the cross-attention width, the number of down-path
    residuals and the channels of each (and where the UNet downsamples), the mid-block channels, and that
    the control-image embedding downscales by the UNet's VAE factor.
    """
    cn, un = controlnet.module, unet.module
    name = f"ControlNet {controlnet.source!r}"
    problems: list[str] = []
    if int(cn.config.in_channels) != int(un.config.in_channels):
        problems.append(f"it takes {cn.config.in_channels} latent channels, the UNet3D {un.config.in_channels}")
    if int(cn.config.cross_attention_dim) != int(un.config.cross_attention_dim):
        problems.append(f"its cross-attention width is {cn.config.cross_attention_dim}, the UNet3D's "
                        f"{un.config.cross_attention_dim}")
    theirs = [int(block.out_channels) for block in cn.controlnet_down_blocks]
    ours = _down_residual_channels(un)
    cn_layout = _down_residual_channels(cn)
    if len(theirs) != len(ours):
        problems.append(f"it gives {len(theirs)} down-block residuals, the UNet3D takes {len(ours)}")
    else:
        for i, ((where, want), got, (cn_where, _)) in enumerate(zip(ours, theirs, cn_layout, strict=True)):
            if want != got:
                problems.append(f"down residual {i} ({where}) has {want} channels in the UNet3D, {got} in the "
                                "ControlNet")
            elif ("downsampler" in where) != ("downsampler" in cn_where):
                problems.append(f"down residual {i} is at {where} in the UNet3D but at {cn_where} in the "
                                "ControlNet (different resolutions)")
    mid_want = int(un.mid_block.resnets[-1].out_channels)
    mid_got = int(cn.controlnet_mid_block.out_channels)
    if mid_want != mid_got:
        problems.append(f"its mid-block residual has {mid_got} channels, the UNet3D's mid block {mid_want}")
    embed_factor = 2 ** (len(cn.config.conditioning_embedding_out_channels) - 1)
    if embed_factor != int(unet.vae_scale_factor):
        problems.append(f"it embeds control images at 1/{embed_factor} of their size, but this model's latents "
                        f"are 1/{unet.vae_scale_factor} of the frames")
    if problems:
        raise ControlError(f"{name} does not fit the UNet3D {unet.source!r}: " + "; ".join(problems))


# ---------------------------------------------------------------------------------------------- sampling


def _control_frames(control: Control, frames: int, height: int, width: int, device: Any, dtype: Any) -> Any:
    """The control images ``[F, C, H, W]`` at the output size and the ControlNet's channel count."""
    import torch

    images = control.frames
    n, channels = int(images.shape[0]), int(images.shape[1])
    if n not in (1, frames):
        raise ControlError(f"{control.controlnet!r} got {n} control frames for a {frames}-frame video; give one "
                           "per frame or a single frame for all")
    want = control.controlnet.conditioning_channels
    if channels != want and channels != 1:
        raise ControlError(f"{control.controlnet!r} takes {want}-channel control images, got {channels} channels")
    images = images.to(dtype=torch.float32)
    if tuple(images.shape[-2:]) != (height, width):
        images = torch.nn.functional.interpolate(images, size=(height, width), mode="bilinear", antialias=True,
                                                 align_corners=False).clamp(0, 1)
    if channels != want:
        images = images.expand(-1, want, -1, -1)
    if n == 1:
        images = images.expand(frames, -1, -1, -1)
    return images.to(device=device, dtype=dtype).contiguous()


@dataclass
class _Prepared:
    """One control ready for the loop: model, images tiled over the folded batch, and its settings."""

    control: Control
    images: torch.Tensor
    embeds: torch.Tensor


class PreparedControls:
    """The conditioning's controls, checked against the UNet3D and laid out for the folded batch once per run.

    ``residuals(model_input, t, step, total)`` returns the summed ``(down, mid)`` residuals for one UNet3D
    call, or ``None`` when no control acts on this step (then the UNet3D runs exactly as without controls).
    """

    def __init__(self, items: list[_Prepared], unet_device: Any, unet_dtype: Any) -> None:
        """Use :func:`prepare_controls`."""
        self._items = items
        self._device = unet_device
        self._dtype = unet_dtype

    def __bool__(self) -> bool:
        """Whether there is any control at all."""
        return bool(self._items)

    def residuals(self, model_input: torch.Tensor, t: Any, step: int, total: int) -> tuple[Any, Any] | None:
        """Run every control active at ``step`` of ``total`` on ``model_input`` ``[N, C, F, h, w]`` and sum."""
        active = [p for p in self._items if p.control.scale != 0 and p.control.active(step, total)]
        if not active:
            return None
        n, c, f, h, w = model_input.shape
        folded = model_input.transpose(1, 2).reshape(n * f, c, h, w)
        down: list[Any] | None = None
        mid: Any = None
        for item in active:
            module = item.control.controlnet.module
            param = next(module.parameters())
            timestep = t.to(param.device) if hasattr(t, "to") else t
            sample = folded.to(device=param.device, dtype=param.dtype)
            d, m = module(sample, timestep, encoder_hidden_states=item.embeds, controlnet_cond=item.images,
                          conditioning_scale=float(item.control.scale), return_dict=False)
            if down is None:
                down, mid = list(d), m
            else:
                down = [prev + cur for prev, cur in zip(down, d, strict=True)]
                mid = mid + m
        assert down is not None
        return (tuple(r.to(device=self._device, dtype=self._dtype) for r in down),
                mid.to(device=self._device, dtype=self._dtype))


def prepare_controls(conditioning: Conditioning, unet: UNet3D, embeds: torch.Tensor, frames: int, height: int,
                     width: int) -> PreparedControls:
    """Check the conditioning's controls against ``unet`` and lay them out for a run.

    ``embeds`` is the UNet's ``encoder_hidden_states`` (``[N, L, D]``, negatives first with guidance);
    ``frames``/``height``/``width`` are the video's frame count and pixel size. The control images are
    tiled over the ``N`` batch entries (index ``n * F + f``, the UNet3D's folding) and the embeddings
    repeated per frame, once here rather than at every step. Raises ``ControlError`` for a ControlNet that
    does not fit the UNet3D or frames that do not fit the video.
    """
    param = next(unet.module.parameters())
    items: list[_Prepared] = []
    for control in conditioning.controls:
        check_compatible(control.controlnet, unet)
        if int(embeds.shape[-1]) != control.controlnet.cross_attention_dim:
            raise ControlError(f"{control.controlnet!r} attends to {control.controlnet.cross_attention_dim}-wide "
                               f"text embeddings, the conditioning's are {int(embeds.shape[-1])} wide")
        cn_param = next(control.controlnet.module.parameters())
        images = _control_frames(control, frames, height, width, cn_param.device, cn_param.dtype)
        batch = int(embeds.shape[0])
        items.append(_Prepared(
            control=control,
            images=images.repeat(batch, 1, 1, 1),
            embeds=embeds.to(device=cn_param.device, dtype=cn_param.dtype).repeat_interleave(frames, dim=0),
        ))
    return PreparedControls(items, param.device, param.dtype)
