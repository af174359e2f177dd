"""Write the tiny AnimateDiff model's weights in every layout people share them in, for the loading tests.

Independent of the loader: the maps below go from diffusers' names to the original ones (LDM's
``model.diffusion_model.*`` / ``first_stage_model.*`` / ``cond_stage_model.transformer.*`` for a Stable Diffusion
1.5 checkpoint, AnimateDiff's own names for a motion module), written from those projects' layouts, while
``load_model`` goes the other way with diffusers' conversion code. Each converter checks that it maps every key it
is given (``unmapped`` must stay empty), so a round trip through the loader covers every tensor.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

# ------------------------------------------------------------------------------------------- motion modules


def motion_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers ``MotionAdapter`` state dict in AnimateDiff's original layout (``temporal_transformer.``,
    ``attention_blocks.0/1`` with their ``pos_encoder.pe`` tables, ``norms.0/1``, ``ff_norm``)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = re.match(r"^(.*\.motion_modules\.\d+)\.(.+)$", key)
        assert m, key
        head, tail = m.groups()
        if tail.endswith("pos_embed.pe"):
            block = tail[: -len("pos_embed.pe")]
            for i in (0, 1):
                out[f"{head}.temporal_transformer.{block}attention_blocks.{i}.pos_encoder.pe"] = value.clone()
            continue
        for new, old in ((".norm1.", ".norms.0."), (".norm2.", ".norms.1."), (".norm3.", ".ff_norm."),
                         (".attn1.", ".attention_blocks.0."), (".attn2.", ".attention_blocks.1.")):
            tail = ("." + tail).replace(new, old)[1:]
        out[f"{head}.temporal_transformer.{tail}"] = value
    return out


# ------------------------------------------------------------------------------------- an LDM SD 1.5 checkpoint

_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
           ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection"))


def _unet_map(config: dict[str, Any]) -> dict[str, str]:
    """diffusers UNet2DConditionModel module prefix -> LDM UNetModel prefix, for a config's blocks."""
    layers = config["layers_per_block"]
    n = len(config["block_out_channels"])
    prefix = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
              "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
              "mid_block.resnets.0": "middle_block.0", "mid_block.attentions.0": "middle_block.1",
              "mid_block.resnets.1": "middle_block.2"}
    for i in range(n):
        for j in range(layers):
            index = 1 + i * (layers + 1) + j
            prefix[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{index}.0"
            prefix[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{index}.1"
        if i < n - 1:
            prefix[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{1 + i * (layers + 1) + layers}.0.op"
    for i, kind in enumerate(config["up_block_types"]):
        for j in range(layers + 1):
            index = i * (layers + 1) + j
            prefix[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{index}.0"
            prefix[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{index}.1"
        if i < n - 1:
            at = 2 if "CrossAttn" in kind else 1
            prefix[f"up_blocks.{i}.upsamplers.0.conv"] = f"output_blocks.{i * (layers + 1) + layers}.{at}.conv"
    return prefix


def _vae_map(config: dict[str, Any]) -> dict[str, str]:
    """diffusers AutoencoderKL module prefix -> LDM AutoencoderKL prefix."""
    n = len(config["block_out_channels"])
    layers = config["layers_per_block"]
    prefix = {"encoder.conv_norm_out": "encoder.norm_out", "decoder.conv_norm_out": "decoder.norm_out"}
    for side in ("encoder", "decoder"):
        prefix[f"{side}.mid_block.resnets.0"] = f"{side}.mid.block_1"
        prefix[f"{side}.mid_block.resnets.1"] = f"{side}.mid.block_2"
        prefix[f"{side}.mid_block.attentions.0"] = f"{side}.mid.attn_1"
    for i in range(n):
        for j in range(layers):
            prefix[f"encoder.down_blocks.{i}.resnets.{j}"] = f"encoder.down.{i}.block.{j}"
        prefix[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = f"encoder.down.{i}.downsample.conv"
        for j in range(layers + 1):
            prefix[f"decoder.up_blocks.{i}.resnets.{j}"] = f"decoder.up.{n - 1 - i}.block.{j}"
        prefix[f"decoder.up_blocks.{i}.upsamplers.0.conv"] = f"decoder.up.{n - 1 - i}.upsample.conv"
    return prefix


def _rename(key: str, prefixes: dict[str, str]) -> str | None:
    for new in sorted(prefixes, key=len, reverse=True):
        if key.startswith(new + "."):
            return prefixes[new] + key[len(new):]
    return None


def unet_to_ldm(state: dict[str, torch.Tensor], config: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A diffusers UNet2DConditionModel state dict in LDM's layout (without the prefix), and the keys it could
    not map."""
    prefixes = _unet_map(config)
    out, unmapped = {}, []
    for key, value in state.items():
        new = _rename(key, prefixes)
        if new is None:
            unmapped.append(key)
            continue
        if ".resnets." in key:  # the resnet's own layers: input_blocks.1.0.norm1.weight -> ….in_layers.0.weight
            head, leaf = new.rsplit(".", 1)
            base, _, sub = head.rpartition(".")
            new = f"{base}.{dict(_RESNET)[sub]}.{leaf}"
        out[new] = value
    return out, unmapped


def vae_to_ldm(state: dict[str, torch.Tensor], config: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A diffusers AutoencoderKL state dict in LDM's layout (attention projections as 1x1 convolutions)."""
    prefixes = _vae_map(config)
    attention = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out, unmapped = {}, []
    for key, value in state.items():
        if key.startswith(("quant_conv.", "post_quant_conv.", "encoder.conv_in.", "encoder.conv_out.",
                           "decoder.conv_in.", "decoder.conv_out.")):
            out[key] = value
            continue
        new = _rename(key, prefixes)
        if new is None:
            unmapped.append(key)
            continue
        if ".attentions." in key:
            inner = key.split(".attentions.0.", 1)[1]
            name, leaf = inner.rsplit(".", 1)
            new = new[: -len(inner)] + f"{attention[name]}.{leaf}"
            if leaf == "weight" and value.ndim == 2:
                value = value[:, :, None, None]
        else:
            new = new.replace(".conv_shortcut.", ".nin_shortcut.")
        out[new] = value
    return out, unmapped


def write_ldm_checkpoint(path: Path, parts: dict[str, Any], extra: bool = True) -> dict[str, int]:
    """Save the tiny model's UNet2D, VAE and CLIP text model as one LDM-layout SD 1.5 ``.safetensors`` checkpoint
    (with the schedule buffers and CLIP ``position_ids`` real checkpoints carry when ``extra``); returns how many
    keys each part has."""
    unet, vae, text = parts["unet"], parts["vae"], parts["text_encoder"]
    u, u_left = unet_to_ldm(unet.state_dict(), dict(unet.config))
    v, v_left = vae_to_ldm(vae.state_dict(), dict(vae.config))
    assert not u_left and not v_left, (u_left[:5], v_left[:5])
    tensors = {f"model.diffusion_model.{k}": t for k, t in u.items()}
    tensors.update({f"first_stage_model.{k}": t for k, t in v.items()})
    tensors.update({f"cond_stage_model.transformer.text_model.{k}": t for k, t in text.state_dict().items()})
    if extra:
        tensors["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
        tensors["betas"] = torch.linspace(0.00085, 0.012, 1000, dtype=torch.float64)
        tensors["alphas_cumprod"] = torch.cumprod(1 - tensors["betas"], 0)
    save_file({k: t.contiguous() for k, t in tensors.items()}, str(path))
    return {"unet": len(u), "vae": len(v), "text_encoder": len(text.state_dict())}


# ------------------------------------------------------------------------------------------------ folders


def write_sd_folder(folder: Path, parts: dict[str, Any], weights: bool = True) -> Path:
    """A diffusers Stable Diffusion 1.5 folder (``StableDiffusionPipeline`` index) of the tiny parts, as
    ``StableDiffusionPipeline.save_pretrained`` lays it out (no safety checker); only configs when not
    ``weights``."""
    from reelgraph.nodes.animatediff.tiny import write_tokenizer_files

    for name in ("unet", "vae", "text_encoder"):
        parts[name].save_pretrained(folder / name, safe_serialization=True)
    parts["scheduler"].save_pretrained(folder / "scheduler")
    parts["tokenizer"].save_pretrained(folder / "tokenizer")
    write_tokenizer_files(folder / "tokenizer", parts["vocab"], parts["merges"])
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
             "feature_extractor": [None, None], "image_encoder": [None, None], "requires_safety_checker": False,
             "safety_checker": [None, None], "scheduler": ["diffusers", "DDIMScheduler"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    if not weights:
        for f in folder.rglob("*.safetensors"):
            f.unlink()
    return folder


def write_animatediff_unet2d_folder(folder: Path, parts: dict[str, Any]) -> Path:
    """An AnimateDiff folder whose ``unet/`` is the Stable Diffusion UNet2D and ``motion_adapter/`` the adapter
    (what a pipeline built from a UNet2D saved before diffusers converted on construction)."""
    write_sd_folder(folder, parts)
    parts["motion_adapter"].save_pretrained(folder / "motion_adapter", safe_serialization=True)
    index = json.loads((folder / "model_index.json").read_text())
    index.update({"_class_name": "AnimateDiffPipeline", "motion_adapter": ["diffusers", "MotionAdapter"]})
    for slot in ("safety_checker", "requires_safety_checker"):
        index.pop(slot)
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def copy_tree(src: Path, dst: Path) -> Path:
    """A copy of a folder (tests edit copies, never the shared builtin)."""
    shutil.copytree(src, dst)
    return dst


def write_sparse_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], dtype: str = "F16") -> int:
    """A safetensors file with these tensor names and shapes whose data is a hole (a sparse file: no disk, no
    memory), for checks that read headers only, at a real model's size; returns its size in bytes."""
    itemsize = {"F16": 2, "F32": 4}[dtype]
    header: dict[str, Any] = {}
    offset = 0
    for name, shape in shapes.items():
        n = 1
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n * itemsize]}
        offset += n * itemsize
    raw = json.dumps(header).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as handle:
        handle.write(len(raw).to_bytes(8, "little"))
        handle.write(raw)
        handle.truncate(8 + len(raw) + offset)
    return 8 + len(raw) + offset


def full_size_sd15_shapes() -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """The tensor shapes of a full Stable Diffusion 1.5 checkpoint in LDM's layout (from the shipped configs, built
    on the meta device) and of AnimateDiff's v2 motion module in its original layout (diffusers' MotionAdapter
    defaults are v2's: 320-1280 channels, 2 modules a block, a mid block, 32 positions)."""
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from reelgraph.nodes.animatediff.shipped import SD15_CONFIG_DIR

    def config(name: str) -> dict[str, Any]:
        return json.loads((SD15_CONFIG_DIR / name / "config.json").read_text())

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config("unet"))
        vae = AutoencoderKL.from_config(config("vae"))
        text = CLIPTextModel(CLIPTextConfig(**config("text_encoder")))
        adapter = MotionAdapter()
    u, _ = unet_to_ldm(unet.state_dict(), dict(unet.config))
    v, _ = vae_to_ldm(vae.state_dict(), dict(vae.config))
    shapes = {f"model.diffusion_model.{k}": tuple(t.shape) for k, t in u.items()}
    shapes.update({f"first_stage_model.{k}": tuple(t.shape) for k, t in v.items()})
    text_prefix = "cond_stage_model.transformer.text_model."
    shapes.update({text_prefix + k: tuple(t.shape) for k, t in text.state_dict().items()})
    motion = {k: tuple(t.shape) for k, t in motion_to_original(adapter.state_dict()).items()}
    return shapes, motion
