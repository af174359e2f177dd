"""``builtin:tiny-animatediff``: a small random AnimateDiff model for tests and smoke runs.

Built like ``builtin:tiny-random`` (``nodes/tiny_models.py``): fixed configs, a fixed seed (every parameter
re-drawn from its own generator, so the motion modules' zero-initialised output projections are random too and
the temporal layers change the result), written once to ``$REELGRAPH_HOME/models/tiny-animatediff-v1`` through
``build_once`` (a temporary sibling renamed into place). The folder is what diffusers' own
``AnimateDiffPipeline.save_pretrained`` writes: ``model_index.json`` of ``AnimateDiffPipeline``, ``unet/`` a
``UNetMotionModel`` (the SD UNet with the motion modules inserted), ``motion_adapter/`` the ``MotionAdapter`` alone,
``vae/``, ``text_encoder/``, ``tokenizer/`` and ``scheduler/``.

Sizes: UNet ``(32, 64)`` channels, one layer per block, 32-wide cross-attention; motion modules with AnimateDiff's
own 8 heads, 32 norm groups and 32 positions (so a motion-module file cut from it loads with the defaults an
original AnimateDiff file implies); VAE with two blocks (downscale 2); the 2-layer CLIP text model and BPE
tokenizer of ``builtin:tiny-random``. A 16-frame 32x32 text-to-video run takes a fraction of a second per step on
one CPU thread. Its output is noise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = [
    "TINY_ANIMATEDIFF_NAME",
    "TINY_ANIMATEDIFF_SOURCE",
    "ensure_tiny_animatediff",
    "tiny_animatediff_components",
    "tiny_animatediff_dir",
]

#: The source id ``load_model`` resolves to the tiny AnimateDiff folder.
TINY_ANIMATEDIFF_SOURCE = "builtin:tiny-animatediff"
#: Folder name; bump the version whenever a config or the seed changes.
TINY_ANIMATEDIFF_NAME = "tiny-animatediff-v1"
_SEED = 20261208

#: The Stable Diffusion UNet the motion modules are inserted into.
UNET_CONFIG: dict[str, Any] = {
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "norm_num_groups": 32,
    "cross_attention_dim": 32,
    "attention_head_dim": 4,
}

#: The motion modules: AnimateDiff's heads, groups and positions, at the tiny UNet's channels.
MOTION_ADAPTER_CONFIG: dict[str, Any] = {
    "block_out_channels": [32, 64],
    "motion_layers_per_block": 1,
    "motion_mid_block_layers_per_block": 1,
    "motion_num_attention_heads": 8,
    "motion_norm_num_groups": 32,
    "motion_max_seq_length": 32,
    "use_motion_mid_block": True,
}

VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 2,
    "up_block_types": ["UpDecoderBlock2D"] * 2,
    "block_out_channels": [16, 32],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 32,
    "scaling_factor": 0.18215,
}

#: AnimateDiff's inference scheduler (its configs/inference: linear betas, linspace spacing, offset 1).
SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "linspace",
}


def tiny_animatediff_dir() -> Path:
    """Where the tiny AnimateDiff folder lives (it may not exist yet; see :func:`ensure_tiny_animatediff`)."""
    from ..tiny_models import reelgraph_home

    return reelgraph_home() / "models" / TINY_ANIMATEDIFF_NAME


def tiny_animatediff_components() -> dict[str, Any]:
    """The tiny model's parts, built from the configs and the seed: ``unet`` (a ``UNet2DConditionModel``),
    ``motion_adapter``, ``vae``, ``text_encoder``, ``tokenizer`` (with ``vocab``/``merges``) and ``scheduler``.
    The same on every machine; tests use it to save the same weights in other layouts."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from ..model_loading import quiet_hf_libraries
    from ..tiny_models import _BOS, _EOS, _MAX_LENGTH, _TEXT_CONFIG, _seeded_init, build_tiny_tokenizer_files

    quiet_hf_libraries()
    vocab, merges = build_tiny_tokenizer_files()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=_MAX_LENGTH)
    text_config = CLIPTextConfig(vocab_size=len(vocab), bos_token_id=vocab[_BOS], eos_token_id=vocab[_EOS],
                                 pad_token_id=vocab[_EOS], **_TEXT_CONFIG)
    generator = torch.Generator("cpu").manual_seed(_SEED)
    parts = {"unet": UNet2DConditionModel(**UNET_CONFIG), "motion_adapter": MotionAdapter(**MOTION_ADAPTER_CONFIG),
             "vae": AutoencoderKL(**VAE_CONFIG), "text_encoder": CLIPTextModel(text_config)}
    for model in parts.values():
        _seeded_init(model, generator)
        model.eval()
    return {**parts, "tokenizer": tokenizer, "vocab": vocab, "merges": merges,
            "scheduler": DDIMScheduler(**SCHEDULER_CONFIG)}


def write_tokenizer_files(folder: Path, vocab: dict[str, int], merges: list[tuple[str, str]]) -> None:
    """Add the slow-format tokenizer files (``vocab.json``, ``merges.txt``) beside what ``save_pretrained`` wrote,
    so the folder loads from either representation (as ``builtin:tiny-random``'s does)."""
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    (folder / "merges.txt").write_text(merges_text, encoding="utf-8")


def _write_tiny_animatediff(folder: Path) -> None:
    """Save the tiny model under ``folder`` (which must not exist) exactly as ``AnimateDiffPipeline`` saves one."""
    from diffusers import AnimateDiffPipeline

    parts = tiny_animatediff_components()
    # The pipeline turns the UNet2DConditionModel + MotionAdapter into a UNetMotionModel, as diffusers users do.
    pipe = AnimateDiffPipeline(vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"],
                               unet=parts["unet"], motion_adapter=parts["motion_adapter"],
                               scheduler=parts["scheduler"])
    pipe.save_pretrained(folder, safe_serialization=True)
    write_tokenizer_files(folder / "tokenizer", parts["vocab"], parts["merges"])


def ensure_tiny_animatediff() -> Path:
    """Return the tiny AnimateDiff folder (``builtin:tiny-animatediff``), building it first if it is missing;
    written atomically, and deterministic: the same seed gives the same weights on every machine."""
    from ..tiny_models import build_once

    target = tiny_animatediff_dir()
    return build_once(target, target / "model_index.json", _write_tiny_animatediff)
