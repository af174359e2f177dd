"""The other names LoRA files give an AnimateDiff UNet's layers, mapped onto diffusers' ``UNetMotionModel`` names.

An AnimateDiff UNet (diffusers' ``UNetMotionModel``) is a Stable Diffusion 1.5 UNet with motion modules, so the
LoRAs users hold for it come from two ecosystems, each with its own module names:

* **SD 1.5 LoRAs in the LDM (CompVis) names** that A1111 reads (``lora_unet_input_blocks_1_1_proj_in``); kohya's
  sd-scripts itself writes SD 1.x LoRAs in diffusers' names (``lora_unet_down_blocks_0_attentions_0_…``), which
  need no mapping. diffusers reads the LDM spellings too (``_maybe_map_sgm_blocks_to_diffusers`` and
  ``_convert_unet_lora_key`` in ``diffusers.loaders.lora_conversion_utils``). With ``L_b`` the resnets of down block
  ``b`` (``L_b + 1`` in up block ``b``):

  * ``input_blocks.0.0`` is ``conv_in``, ``time_embed.0`` / ``.2`` are ``time_embedding.linear_1`` / ``_2``,
    ``out.2`` is ``conv_out``;
  * ``input_blocks.k.0`` / ``.1`` are ``down_blocks.b.resnets.l`` / ``attentions.l``, ``k`` counting from 1 over
    the down blocks' layers plus one more per downsampler, whose ``input_blocks.k.0.op`` is ``downsamplers.0.conv``;
  * ``middle_block.0`` / ``.1`` / ``.2`` are ``mid_block.resnets.0`` / ``attentions.0`` / ``resnets.1``;
  * ``output_blocks.k.0`` / ``.1`` are ``up_blocks.b.resnets.l`` / ``attentions.l``, and the upsampler of a block's
    last layer is ``output_blocks.k.2.conv`` after attentions, else ``output_blocks.k.1.conv`` (SD 1.5's lowest
    resolution up block has no attentions; diffusers' SDXL-minded mapping reads that ``.1`` as an attention);
  * inside a resnet ``in_layers.2``, ``out_layers.3``, ``emb_layers.1`` and ``skip_connection`` are ``conv1``,
    ``conv2``, ``time_emb_proj`` and ``conv_shortcut``; attention blocks keep their inner names.

* **Motion LoRAs in the AnimateDiff project's names** (its v2 camera-motion LoRAs such as "zoom in"):
  ``<block>.motion_modules.<i>.temporal_transformer.transformer_blocks.<j>.attention_blocks.<n>.…`` where
  diffusers has ``<block>.motion_modules.<i>.transformer_blocks.<j>.attn<n+1>.…`` (the renames of diffusers'
  ``scripts/convert_animatediff_motion_lora_to_diffusers.py``). Their ``processor.to_q_lora.down`` spelling and
  their alpha (none: the product is added as it is, i.e. alpha = rank) are :mod:`reelgraph.nodes.lora`'s.

This module also says when LoRA keys that match nothing are the other video family's names (ModelScope's
``temp_attentions`` on an AnimateDiff UNet, or ``motion_modules`` on a ModelScope UNet), for the refusal message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

__all__ = ["family_hint", "is_motion_unet", "ldm_aliases", "motion_module_name"]

_RESNET_INNER = {"conv1": "in_layers.2", "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
                 "conv_shortcut": "skip_connection"}
_TOP_LEVEL = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
              "time_embedding.linear_2": "time_embed.2", "conv_out": "out.2"}
_MOTION_ORIGINAL = re.compile(r"\.temporal_transformer(?=\.|$)")
_ATTENTION_BLOCK = re.compile(r"\.attention_blocks\.(\d+)(?=\.|$)")
#: Module-name parts only one of the two UNet families has.
_MODELSCOPE_PARTS = ("temp_attentions", "temp_convs", "transformer_in")
_MOTION_PARTS = ("motion_modules", "temporal_transformer")


def is_motion_unet(model: Any) -> bool:
    """Whether ``model`` is an AnimateDiff UNet (diffusers' ``UNetMotionModel``)."""
    return type(model).__name__ == "UNetMotionModel"


def _resnet_alias(ldm_prefix: str, inner: str) -> str | None:
    """The LDM name of a resnet's layer ``inner`` (``conv1`` …) under ``ldm_prefix``, or None (norms)."""
    name = _RESNET_INNER.get(inner)
    return f"{ldm_prefix}.{name}" if name else None


def _block_aliases(kind: str, block: Any, index: int, ldm: str, layers: int, names: dict[str, str]) -> None:
    """Add ``names[diffusers name] = LDM name`` for block ``index`` of ``kind`` (``down_blocks`` / ``up_blocks``),
    whose first layer is the LDM block ``ldm`` (``input_blocks.k`` / ``output_blocks.k``) and which has ``layers``
    resnets."""
    start = int(ldm.rsplit(".", 1)[1])
    base = ldm.rsplit(".", 1)[0]
    prefix = f"{kind}.{index}"
    for sub, _ in _linear_or_conv(block):
        parts = sub.split(".")
        if parts[0] == "resnets" and len(parts) >= 3:
            alias = _resnet_alias(f"{base}.{start + int(parts[1])}.0", ".".join(parts[2:]))
        elif parts[0] == "attentions" and len(parts) >= 3:
            alias = f"{base}.{start + int(parts[1])}.1.{'.'.join(parts[2:])}"
        elif parts[0] == "downsamplers" and sub == "downsamplers.0.conv":
            alias = f"{base}.{start + layers}.0.op"
        elif parts[0] == "upsamplers" and sub == "upsamplers.0.conv":
            after = 2 if getattr(block, "attentions", None) is not None else 1
            alias = f"{base}.{start + layers - 1}.{after}.conv"
        else:
            alias = None  # motion modules and norms have no LDM name
        if alias is not None:
            names[f"{prefix}.{sub}"] = alias


def _linear_or_conv(module: Any) -> Iterable[tuple[str, Any]]:
    """The linear and convolution layers inside ``module``, by their names relative to it."""
    import torch

    kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    return ((name, m) for name, m in module.named_modules() if name and isinstance(m, kinds))


def ldm_aliases(model: Any) -> dict[str, str]:
    """LDM (CompVis) name -> diffusers module name, for every linear/conv layer of an SD-style UNet (a
    ``UNetMotionModel``'s 2D part) that has one; computed from the model's own blocks (see the module docstring)."""
    names: dict[str, str] = {}
    modules = dict(model.named_modules())
    for diffusers, ldm in _TOP_LEVEL.items():
        if diffusers in modules:
            names[diffusers] = ldm
    k = 1
    for b, block in enumerate(getattr(model, "down_blocks", ())):
        layers = len(block.resnets)
        _block_aliases("down_blocks", block, b, f"input_blocks.{k}", layers, names)
        k += layers + (1 if getattr(block, "downsamplers", None) is not None else 0)
    mid = getattr(model, "mid_block", None)
    if mid is not None:
        for sub, _ in _linear_or_conv(mid):
            parts = sub.split(".")
            if parts[0] == "resnets" and len(parts) >= 3 and parts[1] in ("0", "1"):
                alias = _resnet_alias(f"middle_block.{2 * int(parts[1])}", ".".join(parts[2:]))
            elif parts[0] == "attentions" and parts[1] == "0" and len(parts) >= 3:
                alias = f"middle_block.1.{'.'.join(parts[2:])}"
            else:
                alias = None
            if alias is not None:
                names[f"mid_block.{sub}"] = alias
    k = 0
    for b, block in enumerate(getattr(model, "up_blocks", ())):
        layers = len(block.resnets)
        _block_aliases("up_blocks", block, b, f"output_blocks.{k}", layers, names)
        k += layers
    return {ldm: diffusers for diffusers, ldm in names.items()}


def motion_module_name(key: str) -> str | None:
    """diffusers' name for a motion-module layer named as the AnimateDiff project names it, or None when ``key``
    is not in that layout (``…motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.1.to_k``
    is ``…motion_modules.0.transformer_blocks.0.attn2.to_k``)."""
    if ".motion_modules." not in f".{key}" or not _MOTION_ORIGINAL.search(key):
        return None
    name = _MOTION_ORIGINAL.sub("", key)
    return _ATTENTION_BLOCK.sub(lambda m: f".attn{int(m[1]) + 1}", name)


def family_hint(keys: Iterable[str], model: Any) -> str:
    """A note for the refusal of unmatched LoRA keys when they are the other UNet family's module names, else
    an empty string."""
    keys = list(keys)
    if is_motion_unet(model) and any(part in key for key in keys for part in _MODELSCOPE_PARTS):
        return ("; the file names ModelScope/Zeroscope layers (temp_attentions, temp_convs, transformer_in), and "
                "this UNet is an AnimateDiff UNetMotionModel")
    if type(model).__name__ == "UNet3DConditionModel" and any(part in key for key in keys for part in _MOTION_PARTS):
        return ("; the file names AnimateDiff motion modules (motion_modules), and this UNet is a ModelScope-"
                "family UNet3DConditionModel")
    return ""
