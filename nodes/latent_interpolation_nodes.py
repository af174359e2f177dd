"""Node: frame interpolation in latent space with the UNet3D (masked denoising around known keyframes)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from reelgraph import NodeInputError, RunContext, node

from .context_windows import ContextFrames, ContextFuse, ContextOverlap
from .values import Conditioning, Latents, Scheduler, UNet3D


@node("unet3d_interpolate", category="sampling", output="latents")
def unet3d_interpolate(
    unet: UNet3D,
    scheduler: Scheduler,
    conditioning: Conditioning,
    latents: Latents,
    ctx: RunContext,
    multiplier: Annotated[int, Field(ge=2, le=64)] = 2,
    steps: Annotated[int, Field(ge=1, le=1000)] = 25,
    guidance_scale: Annotated[float, Field(ge=0, le=100)] = 9.0,
    seed: Annotated[int, Field(ge=0, lt=2**63)] = 0,
    resample: Annotated[int, Field(ge=0, le=20)] = 0,
    context_frames: ContextFrames = None,
    context_overlap: ContextOverlap = 4,
    context_fuse: ContextFuse = "pyramid",
) -> Latents:
    """Generate the latent frames between keyframes with the UNet3D: N keyframes become (N-1)*multiplier+1.

    Make-A-Video style masked interpolation: the clip is denoised from noise (DDIM) and at every step the
    keyframe positions are replaced by the keyframes noised to that step's level, so the model fills the
    frames between them coherently. The keyframes come out unchanged at every multiplier-th position.

    Args:
        unet: the model's UNet3D.
        scheduler: the model's scheduler configuration (a DDIM scheduler is built from it).
        conditioning: the prompt of the clip, from ``clip_text_encode`` (ControlNet controls need one frame per
            output frame, or a single frame).
        latents: keyframe latents ``[1, C, N, h, w]`` with N >= 2, e.g. from ``unet3d_denoise`` or ``vae_encode``.
        multiplier: output frames per keyframe interval; every multiplier-th output frame is a keyframe.
        steps: denoising steps.
        guidance_scale: classifier-free guidance; 1 or less turns it off.
        seed: seeds the starting noise and the resampling noise.
        resample: RePaint-style rounds per step (re-noise one step and denoise again) to blend the generated
            frames with the keyframes; each round costs one more UNet pass per step.
        context_frames: sliding temporal windows of this many frames for long clips (as in ``unet3d_denoise``);
            empty = the whole clip at once.
        context_overlap: frames shared by neighbouring windows (smaller than ``context_frames``).
        context_fuse: ``pyramid`` or ``flat`` averaging of overlapping window predictions.
    """
    from .context_windows import ContextWindowError
    from .controlnet import ControlError
    from .latent_interpolation import interpolate_latents

    if latents.num_frames < 2:
        raise NodeInputError(f"interpolation needs at least 2 keyframes, got {latents.num_frames}", input="latents")
    try:
        tensor = interpolate_latents(unet, scheduler, conditioning, latents, multiplier, steps=steps,
                                     guidance_scale=guidance_scale, seed=seed, resample=resample,
                                     context_frames=context_frames, context_overlap=context_overlap,
                                     context_fuse=context_fuse, progress=lambda i, n: ctx.progress(i, n))
    except ContextWindowError as exc:
        raise NodeInputError(str(exc), input=exc.input) from exc
    except ControlError as exc:
        raise NodeInputError(str(exc), input="conditioning") from exc
    return Latents(tensor)
