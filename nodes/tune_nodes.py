"""Nodes: one-shot tuning of the UNet3D on a clip (``tune_video``, Tune-A-Video as a LoRA) and writing a LoRA
from a link to a file (``save_lora``).

``tune_video`` returns an in-memory ``LoraAdapter`` that ``load_lora.lora`` applies; the engine caches it like
any other result (same inputs, same adapter, no retraining). The training itself is in
:mod:`reelgraph.nodes.tuning`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

from pydantic import Field

from reelgraph import NodeInputError, OutputPath, RunContext, RunInterrupted, node

from .lora import LoraAdapter
from .tuning import DEFAULT_TARGETS, LoraTrainer, TuneSettings, TuningError
from .values import VAE, Latents, Scheduler, TextEncoder, UNet3D, Video

logger = logging.getLogger(__name__)

LORA_SUFFIX = ".safetensors"


def _check_suffix(path: Path | None, input: str) -> None:
    """Refuse a LoRA path that is not ``.safetensors`` (before any work is done)."""
    if path is not None and path.suffix.lower() != LORA_SUFFIX:
        raise NodeInputError(f"{path.name!r}: a LoRA is written as {LORA_SUFFIX}; rename it", input=input)


def _write(adapter: LoraAdapter, path: Path, ctx: RunContext, input: str) -> Path:
    """Write ``adapter`` atomically to ``path``, or to a free ``name-N.safetensors`` beside an existing file."""
    from reelgraph.files import atomic_path

    target = ctx.claim_output(path, input)
    with atomic_path(target) as tmp:
        adapter.save(tmp)
    return target


def _clip_latents(vae: VAE | None, video: Video | None, latents: Latents | None, ctx: RunContext) -> Latents:
    """The clip's latents: given, or encoded from ``video`` with ``vae`` (posterior mean, as ``vae_encode``)."""
    if latents is not None:
        if vae is not None or video is not None:
            raise NodeInputError("give the clip either as latents or as vae + video, not both", input="latents")
        if latents.tensor.shape[0] != 1:
            raise NodeInputError(f"tune_video tunes on one clip; the latents have batch {latents.tensor.shape[0]}",
                                 input="latents")
        return latents
    for name, value in (("video", video), ("vae", vae)):
        if value is None:
            raise NodeInputError(f"tune_video needs the clip: link latents (from vae_encode), or vae and video; "
                                 f"{name} is missing", input=name, code="missing_input")
    assert vae is not None and video is not None
    factor = vae.scale_factor
    if video.height % factor or video.width % factor:
        raise NodeInputError(f"the video's size {video.height}x{video.width} is not divisible by the VAE factor "
                             f"{factor}; resize it with load_video's height/width", input="video")
    from . import sampling

    return sampling.vae_encode(vae, video)


@node("tune_video", category="models", output="lora")
def tune_video(
    unet: UNet3D,
    text_encoder: TextEncoder,
    scheduler: Scheduler,
    caption: str,
    ctx: RunContext,
    vae: VAE | None = None,
    video: Video | None = None,
    latents: Latents | None = None,
    steps: Annotated[int, Field(ge=1, le=100_000)] = 300,
    learning_rate: Annotated[float, Field(gt=0, le=1)] = 1e-4,
    rank: Annotated[int, Field(ge=1, le=1024)] = 8,
    targets: Annotated[list[str], Field(min_length=1)] = DEFAULT_TARGETS,
    seed: Annotated[int, Field(ge=0, lt=2**63)] = 0,
    batch_frames: Annotated[int, Field(ge=1, le=4096)] | None = None,
    gradient_checkpointing: bool = False,
    save_path: OutputPath | None = None,
) -> LoraAdapter:
    """Tune the UNet3D on one clip (Tune-A-Video, DreamBooth) and return the result as a LoRA for ``load_lora``.

    Standard DDPM training on the clip's latents under the caption: per step a seeded timestep and noise, the
    loss between the UNet's prediction and the scheduler's target (epsilon, velocity or sample), AdamW,
    gradient clipping at 1. A LoRA (alpha = rank) on the ``targets`` layers is trained; the input model is never
    modified (training runs on a copy sharing its weights read-only). Deterministic for a seed on the CPU.
    Progress events carry the step's ``loss``. The engine caches the adapter like any result, so re-running
    with the same inputs does not retrain.

    Interruption keeps the last good adapter in ``save_path``: the node stops with the run (nothing is
    cached, a re-run trains from the start), but when ``save_path`` is set the adapter of the last completed
    step is written there first (its ``reelgraph.lora`` metadata says ``steps_done``). The same holds when the
    loss stops being finite (the node then fails on ``learning_rate``).

    Args:
        unet: the UNet3D to tune (``load_model.unet``, or a ``load_lora.unet`` to tune on top of a LoRA).
        text_encoder: encodes the caption (frozen).
        scheduler: the model's scheduler: its betas and ``prediction_type`` define the loss.
        caption: what the clip shows, e.g. "a man is skiing"; edit it later in the sampling prompt.
        vae: with ``video``: encodes the clip (posterior mean). Leave empty when ``latents`` is linked.
        video: the clip to reproduce; height and width must divide by the VAE factor.
        latents: the clip's latents ``[1, C, F, h, w]`` (``vae_encode.latents``) instead of vae + video.
        steps: optimiser steps (Tune-A-Video uses 300 to 500 on a real model; a few dozen on builtin:tiny).
        learning_rate: AdamW learning rate of the LoRA matrices.
        rank: LoRA rank; the adapter holds rank * (in + out) numbers per layer.
        targets: module-name globs (``*`` spans dots) of the Linear layers to adapt. The default is what
            Tune-A-Video trains: spatial self- and cross-attention queries and all temporal attention.
        seed: seeds the LoRA's initialisation, the frame windows, the noise and the timesteps.
        batch_frames: frames per step, a random window of the clip each step (Tune-A-Video's
            n_sample_frames); empty uses every frame.
        gradient_checkpointing: recompute each resnet and attention layer in the backward pass instead of
            keeping its activations: less memory, about a third more time per step.
        save_path: also write the adapter as ``.safetensors`` (diffusers/PEFT keys, readable by
            ``load_lora.source``), relative to ``--out``; written when the node trains (not when its result
            comes from the cache: use ``save_lora`` for a file on every run).
    """
    _check_suffix(save_path, "save_path")
    clip = _clip_latents(vae, video, latents, ctx)
    from . import sampling

    embeds = sampling.encode_prompt(text_encoder, caption, guidance=False).prompt_embeds
    settings = TuneSettings(steps=steps, learning_rate=learning_rate, rank=rank, targets=tuple(targets), seed=seed,
                            batch_frames=batch_frames, gradient_checkpointing=gradient_checkpointing)
    try:
        trainer = LoraTrainer(unet, scheduler, clip.tensor, embeds, settings)
    except TuningError as exc:
        raise NodeInputError(str(exc), input=exc.input) from exc
    name = f"tune_video({caption!r})"
    info = {"caption": caption, "steps": steps, "learning_rate": learning_rate, "rank": rank,
            "alpha": settings.lora_alpha, "targets": list(targets), "seed": seed, "batch_frames": batch_frames,
            "base": unet.source, "base_loras": list(unet.loras), "layers": len(trainer.names)}

    def keep_last_good() -> None:
        if save_path is not None and trainer.steps_done:
            written = _write(trainer.adapter(name, info), save_path, ctx, "save_path")
            logger.warning("tune_video stopped after %d of %d steps; the last good adapter is in %s",
                           trainer.steps_done, steps, written)

    try:
        for i in range(steps):
            loss = trainer.step()
            ctx.progress(i + 1, steps, loss=loss)
    except RunInterrupted:
        keep_last_good()
        raise
    except TuningError as exc:
        keep_last_good()
        raise NodeInputError(str(exc), input=exc.input) from exc
    adapter = trainer.adapter(name, info)
    if save_path is not None:
        written = _write(adapter, save_path, ctx, "save_path")
        adapter.info["saved_to"] = str(written)
        logger.info("tune_video wrote %s", written)
    return adapter


@node("save_lora", category="models", output="path", side_effects=True)
def save_lora(lora: LoraAdapter, ctx: RunContext, path: OutputPath = Path("lora.safetensors")) -> Path:
    """Write an in-memory LoRA (``tune_video.lora``) as a ``.safetensors`` file that ``load_lora`` reads back.

    diffusers/PEFT layout (``unet.<module>.lora_A.weight`` / ``lora_B.weight``, alpha and rank in
    ``lora_adapter_metadata``), written atomically; an existing file is never replaced (unless the run allows
    overwriting): the LoRA goes to ``name-1.safetensors``, ... instead, and the ``path`` output says where.

    Args:
        lora: the adapter, e.g. ``tune_video.lora``.
        path: the ``.safetensors`` file to write, relative to ``--out``.
    """
    _check_suffix(path, "path")
    return _write(lora, path, ctx, "path")
