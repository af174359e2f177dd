"""Motion modules as files: AnimateDiff's original layout, diffusers' ``MotionAdapter`` layout, and what is not one.

The AnimateDiff project ships its motion modules for Stable Diffusion 1.5 (``mm_sd_v15.ckpt``,
``mm_sd_v15_v2.ckpt``, ``v3_sd15_mm.ckpt`` and their ``.safetensors`` copies) as a flat state dict in the key
layout of its own code::

    down_blocks.0.motion_modules.0.temporal_transformer.proj_in.weight
    down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.to_q.weight
    down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.pos_encoder.pe
    down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.norms.1.weight
    down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.ff_norm.weight
    mid_block.motion_modules.0.…      (v2 and v3 only)      up_blocks.3.motion_modules.2.…

diffusers' ``MotionAdapter`` holds the same tensors under the names its conversion
(``convert_animatediff_checkpoint_to_diffusers``) gives them: ``temporal_transformer.`` dropped,
``attention_blocks.0/1`` -> ``attn1/attn2``, ``norms.0/1`` -> ``norm1/norm2``, ``ff_norm`` -> ``norm3``; the
sinusoidal ``pos_encoder.pe`` tables are not weights (diffusers recomputes them, one per transformer block).

A file carries no config, so :func:`infer_adapter_config` reads the adapter's shape from its tensors: the channels
of each down block (``norm.weight``), modules per block, transformer layers per module, whether there is a mid
block, and the number of positions (``pe``'s length: 24 for v1, 32 for v2 and v3). Two things cannot be read from
weights: the number of attention heads and of norm groups; every AnimateDiff release uses 8 and 32, diffusers'
defaults, and so does this loader.

:func:`classify_keys` tells a motion-module file from the files people mistake for one (a LoRA, a motion LoRA, a
ModelScope UNet3D, a whole Stable Diffusion checkpoint), so each gets a refusal that says what it is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from ..weights import TensorInfo

__all__ = [
    "DEFAULT_HEADS",
    "DEFAULT_NORM_GROUPS",
    "classify_keys",
    "infer_adapter_config",
    "original_to_diffusers",
]

#: Attention heads of every released AnimateDiff motion module (not readable from the weights).
DEFAULT_HEADS = 8
#: GroupNorm groups of every released AnimateDiff motion module (not readable from the weights).
DEFAULT_NORM_GROUPS = 32
#: Positions when a file has no ``pe`` table to read them from (diffusers' default, v2/v3's value).
DEFAULT_MAX_SEQ_LENGTH = 32

_ORIGINAL_RENAMES = ((".norms.0", ".norm1"), (".norms.1", ".norm2"), (".ff_norm", ".norm3"),
                     (".attention_blocks.0", ".attn1"), (".attention_blocks.1", ".attn2"),
                     (".temporal_transformer", ""))
_LORA_MARKERS = ("lora_down", "lora_up", "lora_A", "lora_B", ".lora.down", ".lora.up", "_lora.down", "_lora.up",
                 "lora_te_", "lora_unet_")
_MODULE = re.compile(r"^(down_blocks\.(\d+)|mid_block|up_blocks\.(\d+))\.motion_modules\.(\d+)\.(.+)$")


def original_to_diffusers(key: str) -> str | None:
    """The diffusers ``MotionAdapter`` name of a key in AnimateDiff's original layout (None for the ``pe``
    tables, which are computed, not loaded)."""
    if ".pos_encoder." in key:
        return None
    for old, new in _ORIGINAL_RENAMES:
        key = key.replace(old, new)
    return key


def classify_keys(keys: Iterable[str]) -> str:
    """What a weight file's keys say it is: ``original`` (an AnimateDiff motion module in its own layout),
    ``diffusers`` (a ``MotionAdapter`` state dict), ``lora`` (a LoRA, motion LoRAs included), ``modelscope`` (a
    ModelScope / Zeroscope UNet3D), ``checkpoint`` (a whole Stable Diffusion checkpoint or UNet) or ``unknown``."""
    keys = list(keys)
    if any(marker in k for k in keys for marker in _LORA_MARKERS) or any(".processor." in k for k in keys):
        return "lora"
    motion = [k for k in keys if ".motion_modules." in k]
    if motion and all(_MODULE.match(k) for k in keys):
        original = any(".temporal_transformer." in k or ".attention_blocks." in k for k in motion)
        return "original" if original else "diffusers"
    if any(s in k for k in keys for s in ("temp_attentions.", "temp_convs.", "temopral_conv", "transformer_in.")):
        return "modelscope"
    if any(k.startswith(("model.diffusion_model.", "input_blocks.", "conv_in.", "down_blocks.")) for k in keys):
        return "checkpoint"
    return "unknown"


def _count(keys: Iterable[str], pattern: str) -> int:
    regex = re.compile(pattern)
    found = {int(m.group(1)) for k in keys if (m := regex.match(k))}
    return max(found) + 1 if found else 0


def infer_adapter_config(infos: dict[str, TensorInfo]) -> dict[str, Any]:
    """A ``MotionAdapter`` config that fits the tensors ``infos`` (diffusers names, from :func:`original_to_diffusers`
    for an original file; ``pe`` tables may be present under either name). Raises ``ValueError`` naming what is
    missing when the keys do not describe a motion adapter (no down block, a block without modules)."""
    keys = list(infos)
    blocks = _count(keys, r"^down_blocks\.(\d+)\.motion_modules\.")
    if blocks == 0:
        raise ValueError("no down_blocks.<i>.motion_modules.<j> keys: not a motion module")
    channels, layers, transformer_layers = [], [], []
    for i in range(blocks):
        norm = infos.get(f"down_blocks.{i}.motion_modules.0.norm.weight")
        if norm is None or len(norm.shape) != 1:
            raise ValueError(f"down_blocks.{i}.motion_modules.0.norm.weight is missing or not a vector; its channels "
                             "cannot be read")
        channels.append(int(norm.shape[0]))
        layers.append(_count(keys, rf"^down_blocks\.{i}\.motion_modules\.(\d+)\."))
        transformer_layers.append(_count(keys, rf"^down_blocks\.{i}\.motion_modules\.0\.transformer_blocks\.(\d+)\."))
    mid_layers = _count(keys, r"^mid_block\.motion_modules\.(\d+)\.")
    mid_transformer = _count(keys, r"^mid_block\.motion_modules\.0\.transformer_blocks\.(\d+)\.")
    length = DEFAULT_MAX_SEQ_LENGTH
    for key, info in infos.items():
        if key.endswith(".pe") and len(info.shape) == 3:
            length = int(info.shape[1])
            break
    return {
        "block_out_channels": channels,
        "motion_layers_per_block": layers[0] if len(set(layers)) == 1 else layers,
        "motion_transformer_layers_per_block": (transformer_layers[0] if len(set(transformer_layers)) == 1
                                                else transformer_layers),
        "motion_mid_block_layers_per_block": max(mid_layers, 1),
        "motion_transformer_layers_per_mid_block": max(mid_transformer, 1),
        "motion_num_attention_heads": DEFAULT_HEADS,
        "motion_norm_num_groups": DEFAULT_NORM_GROUPS,
        "motion_max_seq_length": length,
        "use_motion_mid_block": mid_layers > 0,
    }
