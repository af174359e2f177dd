"""ModelScope's original UNet layout (``text2video_pytorch_model.pth``) mapped onto diffusers' ``UNet3DConditionModel``.

ModelScope (and sd-webui-text2video, whose ``zs2_576w/``-style folders hold ``text2video_pytorch_model.pth``)
name the UNet's tensors like Stable Diffusion's LDM code; diffusers'
``scripts/convert_ms_text_to_video_to_diffusers.py`` documents the correspondence, which this module computes
from any UNet3D config (so it holds for the 1.7B model and for tiny test models alike). With
``L = layers_per_block``:

* ``time_embed.0`` / ``.2`` are ``time_embedding.linear_1`` / ``linear_2``; ``out.0`` / ``out.2`` are
  ``conv_norm_out`` / ``conv_out``; ``input_blocks.0.0`` / ``.0.1`` are ``conv_in`` / ``transformer_in``.
* Down block ``b``, layer ``l``: ``input_blocks.k.0`` is ``down_blocks.b.resnets.l`` (its ``temopral_conv`` is
  ``temp_convs.l``), ``.1`` is ``attentions.l`` and ``.2`` is ``temp_attentions.l``; ``k`` counts from 1, ``L``
  per block and one more for ``input_blocks.k.op``, the block's ``downsamplers.0.conv`` (all but the last block).
* ``middle_block.0`` … ``.3`` are ``mid_block.resnets.0``, ``attentions.0``, ``temp_attentions.0`` and
  ``resnets.1`` (with the temporal convolutions ``temp_convs.0`` / ``.1`` inside the resnets).
* Up block ``b``, layer ``l < L + 1``: ``output_blocks.k.0`` / ``.1`` / ``.2`` are ``up_blocks.b.resnets.l`` /
  ``attentions.l`` / ``temp_attentions.l``, and ``output_blocks.k.j.conv`` (``j`` = 1, or 3 after the
  attentions) on a block's last layer is its ``upsamplers.0.conv`` (all but the last block).

Inside a resnet ``in_layers.0``, ``in_layers.2``, ``out_layers.0``, ``out_layers.3``, ``emb_layers.1`` and
``skip_connection`` are ``norm1``, ``conv1``, ``norm2``, ``conv2``, ``time_emb_proj`` and ``conv_shortcut``; the
temporal convolution (``temopral_conv``, ModelScope's spelling) and the attention blocks keep their inner names.
The temporal transformers' ``proj_in`` / ``proj_out`` are ``Conv1d`` there (``[out, in, 1]``) and ``Linear`` in
diffusers (``[out, in]``). A ``model.diffusion_model.`` prefix is dropped.

Text-To-Video-Finetuning writes its webui LoRAs with its own converter, hard-wired to the 1.7B layout, which names
the first mid-block resnet ``middle_block.1`` and the upsamplers of the attention up blocks ``output_blocks.k.2``,
and leaves ``conv_in``, ``conv_out`` and ``time_embedding`` in diffusers' names; :func:`unet_module_name` with
``lenient=True`` reads those spellings too (they cannot be confused with other modules).

The UNet config of that layout ships with reelgraph (:data:`MODELSCOPE_UNET_CONFIG`: diffusers' defaults, the
ModelScope 1.7B / Zeroscope architecture).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = [
    "MODELSCOPE_UNET_CONFIG",
    "ORIGINAL_PREFIX",
    "WEBUI_UNET_FILES",
    "fit_original",
    "is_original_layout",
    "modelscope_unet_config",
    "original_key_map",
    "unet_module_name",
]

#: The shipped diffusers config of ModelScope's 1.7B text-to-video UNet (also Zeroscope's and potat1's).
MODELSCOPE_UNET_CONFIG = Path(__file__).resolve().parent / "models" / "modelscope-t2v-1.7b" / "unet" / "config.json"
#: The UNet file of an sd-webui-text2video / ModelScope folder, in the order they are preferred.
WEBUI_UNET_FILES = ("text2video_pytorch_model.safetensors", "text2video_pytorch_model.pth")
#: The prefix LDM-style full checkpoints put before the UNet's keys.
ORIGINAL_PREFIX = "model.diffusion_model."

_RESNET_INNER = (("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("out_layers.0", "norm2"),
                 ("out_layers.3", "conv2"), ("emb_layers.1", "time_emb_proj"), ("skip_connection", "conv_shortcut"))
_MARKERS = ("input_blocks.", "middle_block.", "output_blocks.", "time_embed.")


def modelscope_unet_config() -> dict[str, Any]:
    """The shipped UNet3D config of the ModelScope 1.7B layout (a fresh copy)."""
    return json.loads(MODELSCOPE_UNET_CONFIG.read_text(encoding="utf-8"))


def is_original_layout(keys: Iterable[str]) -> bool:
    """Whether tensor or module names are in ModelScope's original layout (``input_blocks.*``, …)."""
    return any(k.removeprefix(ORIGINAL_PREFIX).startswith(_MARKERS) for k in keys)


def _config_tuple(config: Mapping[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...], int]:
    return (tuple(config["down_block_types"]), tuple(config["up_block_types"]), int(config["layers_per_block"]))


@lru_cache(maxsize=16)
def _prefixes(down: tuple[str, ...], up: tuple[str, ...], layers: int, lenient: bool) -> dict[str, tuple[str, str]]:
    """original prefix -> (diffusers prefix, kind), kind ``resnet`` (inner names renamed), ``temporal`` (Conv1d
    projections) or ``plain``."""
    table: dict[str, tuple[str, str]] = {
        "time_embed.0": ("time_embedding.linear_1", "plain"),
        "time_embed.2": ("time_embedding.linear_2", "plain"),
        "input_blocks.0.0": ("conv_in", "plain"),
        "input_blocks.0.1": ("transformer_in", "temporal"),
        "out.0": ("conv_norm_out", "plain"),
        "out.2": ("conv_out", "plain"),
    }

    def resnet(original: str, ours: str, temp: str) -> None:
        table[original] = (ours, "resnet")
        table[f"{original}.temopral_conv"] = (temp, "plain")

    k = 1
    for b, kind in enumerate(down):
        for layer in range(layers):
            resnet(f"input_blocks.{k}.0", f"down_blocks.{b}.resnets.{layer}", f"down_blocks.{b}.temp_convs.{layer}")
            if kind.startswith("CrossAttn"):
                table[f"input_blocks.{k}.1"] = (f"down_blocks.{b}.attentions.{layer}", "plain")
                table[f"input_blocks.{k}.2"] = (f"down_blocks.{b}.temp_attentions.{layer}", "temporal")
            k += 1
        if b != len(down) - 1:
            table[f"input_blocks.{k}.op"] = (f"down_blocks.{b}.downsamplers.0.conv", "plain")
            k += 1
    resnet("middle_block.0", "mid_block.resnets.0", "mid_block.temp_convs.0")
    table["middle_block.1"] = ("mid_block.attentions.0", "plain")
    table["middle_block.2"] = ("mid_block.temp_attentions.0", "temporal")
    resnet("middle_block.3", "mid_block.resnets.1", "mid_block.temp_convs.1")
    if lenient:  # Text-To-Video-Finetuning's spellings of the first mid-block resnet
        for old, new in _RESNET_INNER:
            table[f"middle_block.1.{old}"] = (f"mid_block.resnets.0.{new}", "plain")
        table["middle_block.1.temopral_conv"] = ("mid_block.temp_convs.0", "plain")
    k = 0
    for b, kind in enumerate(up):
        attn = kind.startswith("CrossAttn")
        for layer in range(layers + 1):
            resnet(f"output_blocks.{k}.0", f"up_blocks.{b}.resnets.{layer}", f"up_blocks.{b}.temp_convs.{layer}")
            if attn:
                table[f"output_blocks.{k}.1"] = (f"up_blocks.{b}.attentions.{layer}", "plain")
                table[f"output_blocks.{k}.2"] = (f"up_blocks.{b}.temp_attentions.{layer}", "temporal")
            if layer == layers and b != len(up) - 1:
                table[f"output_blocks.{k}.{3 if attn else 1}.conv"] = (f"up_blocks.{b}.upsamplers.0.conv", "plain")
                if lenient and attn:  # Text-To-Video-Finetuning's spelling
                    table[f"output_blocks.{k}.2.conv"] = (f"up_blocks.{b}.upsamplers.0.conv", "plain")
            k += 1
    return table


def _convert(name: str, table: dict[str, tuple[str, str]]) -> str | None:
    """One original tensor or module name in diffusers' naming, or None when no prefix matches."""
    parts = name.split(".")
    for size in range(min(len(parts), 6), 0, -1):
        head = ".".join(parts[:size])
        hit = table.get(head)
        if hit is None:
            continue
        ours, kind = hit
        rest = ".".join(parts[size:])
        if kind == "resnet" and rest:
            for old, new in _RESNET_INNER:
                if rest == old or rest.startswith(old + "."):
                    rest = new + rest[len(old):]
                    break
        return f"{ours}.{rest}" if rest else ours
    return None


def original_key_map(keys: Iterable[str], config: Mapping[str, Any]) -> tuple[dict[str, str], list[str]]:
    """``{original tensor name: diffusers tensor name}`` for a checkpoint's keys under ``config``, and the keys
    that match nothing in that layout."""
    table = _prefixes(*_config_tuple(config), False)
    mapping: dict[str, str] = {}
    unknown: list[str] = []
    for key in keys:
        converted = _convert(key.removeprefix(ORIGINAL_PREFIX), table)
        if converted is None:
            unknown.append(key)
        else:
            mapping[key] = converted
    return mapping, unknown


def unet_module_name(name: str, config: Mapping[str, Any], lenient: bool = True) -> str | None:
    """The diffusers module name of an original-layout module name (a LoRA's key), or None."""
    return _convert(name.removeprefix(ORIGINAL_PREFIX), _prefixes(*_config_tuple(config), lenient))


def fit_original(key: str, tensor: Any, shape: tuple[int, ...]) -> Any:
    """A temporal transformer's ``Conv1d`` projection ``[out, in, 1]`` as the ``Linear`` weight ``[out, in]``
    diffusers has; anything else is returned as it is (and then fails the shape check)."""
    if tuple(tensor.shape) == (*shape, 1) and key.endswith(("proj_in.weight", "proj_out.weight")):
        return tensor.reshape(shape)
    return tensor
