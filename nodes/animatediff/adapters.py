"""Where an AnimateDiff model's motion modules come from, checked before anything is built.

``load_model``'s ``motion_adapter`` input (or an AnimateDiff folder's own ``motion_adapter/``) names either a
diffusers ``MotionAdapter`` folder (``config.json`` + weights, e.g. ``guoyww/animatediff-motion-adapter-v1-5-2``)
or one motion-module file as the AnimateDiff project ships it (``.safetensors``, or ``.ckpt`` / ``.pth`` /
``.bin`` read only through ``torch.load(weights_only=True)``). :func:`resolve_motion_adapter` checks it with the
same rules as a model folder (``model_safety``: entry scan, no links out, no remote-code keys, the class from an
allow-list) and returns the weight files, their tensors, the adapter config (the folder's, or read from the file's
shapes: ``motion_files.infer_adapter_config``) and the renamer to diffusers' names. What is not a motion module
(a LoRA, a ModelScope model, a Stable Diffusion checkpoint, a PIA / SparseCtrl adapter) is refused, saying what
it is. :func:`motion_unet_config` is the ``UNetMotionModel`` config diffusers' ``UNetMotionModel.from_unet2d``
derives from a Stable Diffusion UNet config and an adapter config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..model_files import (
    WeightSet,
    check_weight_set,
    choose_weight_set,
    find_weight_sets,
    inspect_weight_set,
)
from ..model_safety import FolderFile, check_class, check_file, read_config, scan_folder
from ..weights import PICKLE_SUFFIXES, SAFETENSORS_SUFFIXES, TensorInfo
from .motion_files import classify_keys, infer_adapter_config, original_to_diffusers

if TYPE_CHECKING:
    import torch

__all__ = ["MotionSource", "adapter_problems", "motion_unet_config", "resolve_motion_adapter", "unet2d_config_of"]

ErrorType = Callable[[str], Exception]
_MAX_LISTED = 8
_WHAT = {
    "lora": "a LoRA (its keys hold lora_down/lora_up, lora_A/lora_B or attention processors); load it with "
            "load_lora on the model's unet instead",
    "modelscope": "a ModelScope / Zeroscope UNet3D (temp_attentions / temp_convs keys), not an AnimateDiff motion "
                  "module; give it as load_model's unet with a ModelScope folder as source",
    "checkpoint": "a Stable Diffusion checkpoint or UNet, not a motion module; give it as load_model's source",
    "unknown": "not a motion module: none of its keys is down_blocks.<i>.motion_modules.<j>.…",
}


@dataclass
class MotionSource:
    """A checked motion adapter: its weight files and their tensors, its ``MotionAdapter`` config, the renamer of
    its keys to diffusers' (None: already diffusers'), a label for messages and a cache fingerprint."""

    weights: WeightSet
    infos: dict[Path, dict[str, TensorInfo]]
    config: dict[str, Any]
    rename: Callable[[str], str | None] | None
    label: str
    fingerprint: tuple[Any, ...]
    from_file: bool = False


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", … and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")


def _from_folder(folder: Path, label: str, error: ErrorType, variant: str, dtype: torch.dtype,
                 files: list[FolderFile] | None = None) -> MotionSource:
    """A diffusers ``MotionAdapter`` folder, after the folder checks; refuses other folders by what they are."""
    files = scan_folder(folder, error) if files is None else files
    names = {f.relative for f in files}
    if "model_index.json" in names:
        index = read_config(folder / "model_index.json", folder, error)
        pipeline = index.get("_class_name")
        hint = (" Give its motion_adapter/ folder, or the folder itself as source" if pipeline and
                "AnimateDiff" in str(pipeline) else " A motion adapter is a MotionAdapter folder or file")
        raise error(f"motion_adapter {label!r} is a whole {pipeline or 'diffusers'} model folder, not a motion "
                    f"adapter.{hint}")
    if "config.json" not in names:
        raise error(f"motion_adapter {label!r} has no config.json: not a diffusers MotionAdapter folder (give a "
                    "motion-module file such as mm_sd_v15_v2.ckpt itself otherwise)")
    for name in names:
        if name == "config.json" or name.endswith("_config.json"):
            read_config(folder / name, folder, error)
    config = read_config(folder / "config.json", folder, error)
    check_class(f"motion_adapter {label!r}: config.json", "motion_adapter", config.get("_class_name"),
                ("MotionAdapter",), error)
    if config.get("conv_in_channels"):
        raise error(f"motion_adapter {label!r} is a PIA / SparseCtrl adapter (conv_in_channels "
                    f"{config['conv_in_channels']}); load_model takes plain AnimateDiff motion adapters")
    present = {n for n in names if "/" not in n}
    sets, problems = find_weight_sets(folder, "diffusers", present)
    chosen, problem = choose_weight_set(sets, variant, dtype, f"motion_adapter {label!r}", "diffusers")
    problems += [problem] if problem else []
    if chosen is None or problems:
        raise error("; ".join(problems))
    infos, problems = inspect_weight_set(chosen, f"motion_adapter {label!r}")
    if problems:
        raise error("; ".join(problems))
    fingerprint = (str(folder), tuple((f.relative, f.size, f.mtime_ns) for f in files))
    return MotionSource(chosen, infos, dict(config), None, label, fingerprint)


def _from_file(path: Path, label: str, error: ErrorType) -> MotionSource:
    """One motion-module file: its tensors (headers, or the pickle through ``weights_only``), its layout, the
    adapter config its shapes imply, and every key that is not a motion-module weight."""
    check_file(path, error)
    suffix = path.suffix.lower()
    if suffix not in (*SAFETENSORS_SUFFIXES, *PICKLE_SUFFIXES):
        raise error(f"motion_adapter {label!r}: unknown weight format {suffix or '(no extension)'}; use "
                    ".safetensors, or .ckpt/.pth/.bin (read through torch.load(weights_only=True))")
    weights = WeightSet(path.parent, None, "safetensors" if suffix in SAFETENSORS_SUFFIXES else "pickle", (path,))
    infos, problems = inspect_weight_set(weights, f"motion_adapter {label!r}")
    if problems:
        raise error("; ".join(problems))
    tensors = infos[path]
    kind = classify_keys(tensors)
    if kind not in ("original", "diffusers"):
        raise error(f"motion_adapter {label!r} is {_WHAT[kind]}")
    rename = original_to_diffusers if kind == "original" else None
    renamed: dict[str, TensorInfo] = {}
    for key, info in tensors.items():
        new = rename(key) if rename is not None else key
        renamed[new if new is not None else key] = info
    try:
        config = infer_adapter_config(renamed)
    except ValueError as exc:
        raise error(f"motion_adapter {label!r}: {exc}") from None
    info = path.stat()
    return MotionSource(weights, infos, config, rename, label, (str(path.resolve()), info.st_size, info.st_mtime_ns),
                        from_file=True)


def resolve_motion_adapter(value: str, error: ErrorType, variant: str, dtype: torch.dtype) -> MotionSource:
    """Check the motion adapter ``value`` names (a ``MotionAdapter`` folder or a motion-module file) and return it;
    raises ``error`` saying what is wrong (missing, refused, not a motion adapter)."""
    path = Path(value).expanduser()
    if path.is_dir():
        return _from_folder(path.resolve(), value, error, variant, dtype)
    if not path.exists() and not path.is_symlink():
        raise error(f"motion_adapter {value!r} does not exist")
    return _from_file(path, value, error)


def adapter_problems(source: MotionSource, unet: Any) -> list[str]:
    """Every mismatch between a motion adapter's files and the motion modules of ``unet`` (the meta
    ``UNetMotionModel`` it joins): weights the files lack, shapes that differ, and, for a single file, every tensor
    that is not a motion-module weight (a file's extra or misnamed keys, named; a folder's extra tensors are skipped
    as diffusers skips them). Empty when it fits."""
    where = f"motion_adapter {source.label!r}"

    def motion(key: str) -> bool:
        return ".motion_modules." in key

    problems = check_weight_set(source.weights, unet, where, source.rename, None, source.infos, only=motion)
    if source.from_file:
        expected = {k for k in unet.state_dict() if motion(k)}
        extra = []
        for infos in source.infos.values():
            for key in infos:
                new = source.rename(key) if source.rename is not None else key
                if new is not None and new not in expected:
                    extra.append(key)
        if extra:
            problems.append(f"{where}: {len(extra)} tensor(s) are not weights of a motion adapter with the shapes the "
                            f"file implies: {_listing(sorted(extra))}")
    return problems


def _defaults(cls: Any) -> dict[str, Any]:
    """The keyword defaults of a diffusers model class's constructor (what ``from_config`` fills in)."""
    import inspect

    return {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _per_block(value: Any, blocks: int) -> list[Any]:
    return [value] * blocks if isinstance(value, int) else list(value)


def motion_unet_config(unet_config: dict[str, Any], adapter_config: dict[str, Any]) -> dict[str, Any]:
    """The ``UNetMotionModel`` config of a Stable Diffusion UNet (``UNet2DConditionModel`` config) with the motion
    adapter ``adapter_config`` inserted: the rule of diffusers' ``UNetMotionModel.from_unet2d`` (block types to
    their Motion twins, the adapter's heads, positions, mid block and layer counts), computed from the configs
    alone (no module is built; a test checks it against ``from_unet2d``). Raises ``ValueError`` when they do not fit
    (other numbers of blocks or of layers per block)."""
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    unet = {**_defaults(UNet2DConditionModel), **unet_config}
    adapter = {**_defaults(MotionAdapter), **adapter_config}
    blocks = len(unet["down_block_types"])
    if blocks != len(adapter["block_out_channels"]):
        raise ValueError("Incompatible Motion Adapter, got different number of blocks")
    if _per_block(unet["layers_per_block"], blocks) != _per_block(adapter["motion_layers_per_block"], blocks):
        raise ValueError("Incompatible Motion Adapter, got different number of layers per block")
    config = dict(unet)
    config["down_block_types"] = ["CrossAttnDownBlockMotion" if "CrossAttn" in t else "DownBlockMotion"
                                  for t in unet["down_block_types"]]
    config["up_block_types"] = ["CrossAttnUpBlockMotion" if "CrossAttn" in t else "UpBlockMotion"
                                for t in unet["up_block_types"]]
    config.update({
        "motion_num_attention_heads": adapter["motion_num_attention_heads"],
        "motion_max_seq_length": adapter["motion_max_seq_length"],
        "use_motion_mid_block": adapter["use_motion_mid_block"],
        "layers_per_block": adapter["motion_layers_per_block"],
        "temporal_transformer_layers_per_mid_block": adapter["motion_transformer_layers_per_mid_block"],
        "temporal_transformer_layers_per_block": adapter["motion_transformer_layers_per_block"],
    })
    if adapter["conv_in_channels"]:
        config["in_channels"] = adapter["conv_in_channels"]
    if not config.get("num_attention_heads"):
        config["num_attention_heads"] = config["attention_head_dim"]
    defaults = _defaults(UNetMotionModel)
    out = {**defaults, **{k: v for k, v in config.items() if k in defaults}}
    out["_class_name"] = UNetMotionModel.__name__
    return out


def unet2d_config_of(motion_config: dict[str, Any]) -> dict[str, Any]:
    """The Stable Diffusion ``UNet2DConditionModel`` config inside a ``UNetMotionModel`` config (its block types
    back to the 2-D ones; the motion keys are left for ``from_config`` to ignore), so another adapter can be
    inserted into an AnimateDiff UNet."""
    config = dict(motion_config)
    config["_class_name"] = "UNet2DConditionModel"
    config["down_block_types"] = ["CrossAttnDownBlock2D" if "CrossAttn" in t else "DownBlock2D"
                                  for t in motion_config["down_block_types"]]
    config["up_block_types"] = ["CrossAttnUpBlock2D" if "CrossAttn" in t else "UpBlock2D"
                                for t in motion_config["up_block_types"]]
    # UNet2DConditionModel refuses num_attention_heads; its attention_head_dim is that number (diffusers' naming).
    heads = config.pop("num_attention_heads", None)
    if heads is not None and config.get("attention_head_dim") is None:
        config["attention_head_dim"] = heads
    for key in ("motion_max_seq_length", "motion_num_attention_heads", "reverse_motion_num_attention_heads",
                "use_motion_mid_block", "mid_block_layers", "temporal_transformer_layers_per_block",
                "reverse_temporal_transformer_layers_per_block", "temporal_transformer_layers_per_mid_block"):
        config.pop(key, None)
    return config
