"""Nodes: prompt encoding, VAE encode/decode, UNet3D denoising and DDIM inversion.

Each node wraps one function of :mod:`reelgraph.nodes.sampling`, whose loops reproduce diffusers'
``TextToVideoSDPipeline`` / ``VideoToVideoSDPipeline`` (ModelScope UNet3D), ``AnimateDiffPipeline`` /
``AnimateDiffVideoToVideoPipeline`` / ``AnimateDiffControlNetPipeline`` (AnimateDiff ``UNetMotionModel``) and
``DDIMInverseScheduler`` step for step; the nodes add typed ports, progress, interruption and located errors.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from reelgraph import NodeInputError, RunContext, node
from reelgraph.memory import check_tensor_memory, tensor_nbytes

from . import sampling
from .context_windows import ContextFrames, ContextFuse, ContextOverlap
from .static_checks import sizes_fit_the_model
from .values import VAE, Conditioning, Latents, Scheduler, TextEncoder, UNet3D, Video

SchedulerType = Literal["default", "ddim", "dpm++", "euler"]
Steps = Annotated[int, Field(ge=1, le=1000)]
ChunkFrames = Annotated[int, Field(ge=1, le=4096)]


def _report(ctx: RunContext) -> Any:
    return lambda i, n: ctx.progress(i, n)


def _check_pixels(unet: UNet3D, **sizes: int | None) -> None:
    factor = unet.vae_scale_factor
    for name, value in sizes.items():
        if value is not None and value % factor:
            raise NodeInputError(f"{name}={value} is not divisible by the VAE factor {factor} of this model; "
                                 f"try {max(factor, value // factor * factor)}", input=name)


@node("clip_text_encode", category="conditioning", output="conditioning")
def clip_text_encode(text_encoder: TextEncoder, prompt: str, negative_prompt: str = "") -> Conditioning:
    """Encode a prompt and its negative into cross-attention conditioning, as the t2v pipeline does.

    Args:
        text_encoder: the tokenizer and CLIP text model (``load_model.text_encoder``).
        prompt: what the video shows.
        negative_prompt: what it should not show (used when guidance_scale > 1).
    """
    return sampling.encode_prompt(text_encoder, prompt, negative_prompt, guidance=True)


@node("vae_encode", category="latents", output="latents")
def vae_encode(vae: VAE, video: Video, ctx: RunContext, chunk_frames: ChunkFrames = 8,
               tile_size: Annotated[int, Field(ge=8, le=16384)] | None = None,
               tile_overlap: Annotated[int, Field(ge=0, le=16384)] = 32) -> Latents:
    """Encode frames into scaled latents ``[1, C, F, h, w]`` (the posterior mean), a chunk of frames at a time.

    Args:
        vae: the model's VAE.
        video: frames whose height and width divide by the VAE factor.
        chunk_frames: frames per VAE call; peak memory depends on this, not on the clip's length.
        tile_size: encode in spatial tiles of this many pixels (a multiple of the VAE factor) so memory stays
            bounded for large frames; empty encodes whole frames. Tiling approximates the untiled result.
        tile_overlap: pixels shared by neighbouring tiles and cross-faded (a multiple of the VAE factor).
    """
    factor = vae.scale_factor
    for name, value in (("height", video.height), ("width", video.width)):
        if value % factor:
            raise NodeInputError(f"the video's {name} {value} is not divisible by the VAE factor {factor}; "
                                 "resize it with load_video's height/width", input="video")
    if tile_size is None:
        return sampling.vae_encode(vae, video, chunk_frames=chunk_frames, progress=_report(ctx))
    from .vae_tiling import TilingError, tiled_vae_encode

    try:
        return tiled_vae_encode(vae, video, tile_size, tile_overlap, chunk_frames=chunk_frames,
                                progress=_report(ctx))
    except TilingError as exc:
        raise NodeInputError(str(exc), input=exc.input) from exc


def _check_decode_memory(ctx: RunContext, vae: VAE, latents: Latents, chunk_frames: int, tile: int | None) -> None:
    """Refuse (too_large) a decode whose frames plus per-chunk activations exceed the run's memory limit."""
    _, _, frames, h, w = (int(d) for d in latents.tensor.shape)
    height, width = h * vae.scale_factor, w * vae.scale_factor
    output = frames * 3 * height * width * 4
    area = min(tile or height, height) * min(tile or width, width)
    activations = min(chunk_frames, frames) * area * int(vae.module.config.block_out_channels[0]) * 4 * 4
    ctx.check_memory(output + activations, f"decoding {frames} frames of {width}x{height}", input="latents")


@node("vae_decode", category="latents", output="video")
def vae_decode(vae: VAE, latents: Latents, ctx: RunContext, chunk_frames: ChunkFrames = 8,
               fps: Annotated[float, Field(gt=0, le=1000)] = 8.0,
               tile_size: Annotated[int, Field(ge=8, le=16384)] | None = None,
               tile_overlap: Annotated[int, Field(ge=0, le=16384)] = 32) -> Video:
    """Decode scaled latents into frames in [0, 1], a chunk of frames at a time.

    Args:
        vae: the model's VAE.
        latents: ``[1, C, F, h, w]`` latents, e.g. from ``unet3d_denoise``.
        chunk_frames: frames per VAE call; peak memory depends on this, not on the clip's length.
        fps: the frame rate stamped on the video (latents carry none).
        tile_size: decode in spatial tiles of this many output pixels (a multiple of the VAE factor) so
            memory is bounded by the tile, not the frame; empty decodes whole frames. Tiling approximates
            the untiled result (the VAE's normalisation sees one tile at a time).
        tile_overlap: output pixels shared by neighbouring tiles and cross-faded (a multiple of the VAE
            factor); about a quarter of ``tile_size`` hides the seams.
    """
    _check_decode_memory(ctx, vae, latents, chunk_frames, tile_size)
    if tile_size is None:
        return sampling.vae_decode(vae, latents, chunk_frames=chunk_frames, fps=fps, progress=_report(ctx))
    from .vae_tiling import TilingError, tiled_vae_decode

    try:
        return tiled_vae_decode(vae, latents, tile_size, tile_overlap, chunk_frames=chunk_frames, fps=fps,
                                progress=_report(ctx))
    except TilingError as exc:
        raise NodeInputError(str(exc), input=exc.input) from exc


#: Whole-clip latent tensors alive at once in a sampling step: the latents, the starting noise, the (fused)
#: prediction and its float32 accumulator, the frame-major copies the scheduler steps, its result and the
#: multistep history of DPM-Solver++.
_CLIP_COPIES = 8


def _check_denoise_memory(ctx: RunContext, unet: UNet3D, conditioning: Conditioning, given: Latents | None,
                          frames: int | None, height: int | None, width: int | None, guidance_scale: float,
                          context_frames: int | None, input: str) -> None:
    """Refuse (too_large, naming ``input``) a denoise or inversion that would exceed the memory limit.

    Two parts, both rough upper estimates: the whole clip's latents, several copies of which live through
    every step whatever the context windows (so ``context_frames=1`` on a huge clip is refused too), plus
    the UNet3D's activations for the frames it sees at once (a context window, when set): the widest block,
    a few times over, doubled under classifier-free guidance.
    """
    batch = int(conditioning.prompt_embeds.shape[0])
    channels = int(unet.module.config.in_channels)
    if given is not None:
        batch, channels, frames, h, w = (int(d) for d in given.tensor.shape)
    else:
        h, w = (height or 0) // unet.vae_scale_factor, (width or 0) // unet.vae_scale_factor
    frames = frames or 1
    seen = min(context_frames or frames, frames)
    widest = max(int(c) for c in unet.module.config.block_out_channels)
    cfg = 2 if guidance_scale > 1 else 1
    window = tensor_nbytes((cfg * batch, widest, seen, h, w), 4) * 8
    what = f"denoising {frames} frames of {w}x{h} latents" + (f" in windows of {seen}" if seen < frames else "")
    check_tensor_memory(ctx, (batch, channels, frames, h, w), 4, what, input, copies=_CLIP_COPIES, extra=window)


@node("unet3d_denoise", category="sampling", output="latents", check=sizes_fit_the_model("height", "width"))
def unet3d_denoise(
    unet: UNet3D,
    scheduler: Scheduler,
    conditioning: Conditioning,
    ctx: RunContext,
    frames: Annotated[int, Field(ge=1, le=4096)] = 16,
    height: Annotated[int, Field(ge=8, le=8192)] | None = None,
    width: Annotated[int, Field(ge=8, le=8192)] | None = None,
    steps: Steps = 25,
    guidance_scale: Annotated[float, Field(ge=0, le=100)] = 9.0,
    seed: Annotated[int, Field(ge=0, lt=2**63)] = 0,
    eta: Annotated[float, Field(ge=0, le=1)] = 0.0,
    scheduler_type: SchedulerType = "default",
    noise: Latents | None = None,
    latents: Latents | None = None,
    strength: Annotated[float, Field(gt=0, le=1)] = 1.0,
    context_frames: ContextFrames = None,
    context_overlap: ContextOverlap = 4,
    context_fuse: ContextFuse = "pyramid",
) -> Latents:
    """Generate video latents with the UNet3D: text-to-video, from given noise, or video-to-video.

    For the same model, prompts, seed, size, frames, steps, guidance and scheduler the result equals
    diffusers' ``TextToVideoSDPipeline`` (ModelScope family) or ``AnimateDiffPipeline`` (AnimateDiff; with
    ControlNet controls ``AnimateDiffControlNetPipeline``) with ``generator=torch.Generator("cpu").manual_seed(seed)``.
    An AnimateDiff UNet's motion modules take at most their ``motion_max_seq_length`` frames (often 32) per
    call: a longer clip needs ``context_frames``, and is refused before any step without it.

    Args:
        unet: the model's UNet3D.
        scheduler: the model's scheduler configuration.
        conditioning: from ``clip_text_encode``, optionally carrying ControlNet controls
            (``controlnet_condition``), applied to both guidance halves.
        frames: number of frames (ignored when ``noise`` or ``latents`` is given).
        height: frame height in pixels, a multiple of the VAE factor (default: the model's sample size).
        width: frame width in pixels, a multiple of the VAE factor (default: the model's sample size).
        steps: denoising steps. At 1000 (one per training timestep) the timesteps are 999 down to 0,
            whatever the scheduler's spacing, since its own spacing would step past the last one.
        guidance_scale: classifier-free guidance; 1 or less turns it off.
        seed: seeds the starting noise (drawn exactly as diffusers draws it) and DDIM's eta noise.
        eta: DDIM stochasticity (0 is deterministic DDIM).
        scheduler_type: ``default`` (the model's own), ``ddim``, ``dpm++`` or ``euler``.
        noise: starting noisy latents instead of seeded noise, e.g. ``ddim_invert.noise``.
        latents: clean latents to re-generate (video-to-video), noised to ``strength``'s level.
        strength: how much of the schedule runs on ``latents`` (1.0 = from pure noise).
        context_frames: for long videos, run the UNet3D on sliding temporal windows of this many frames and
            average their overlapping predictions (UNet memory bounded by the window; the whole clip's latents
            are still held, and counted against ``--max-memory``); empty = the whole clip at once. Windows as
            long as the clip give exactly the windowless result. For AnimateDiff, 16 (what its motion modules
            were trained on) and never more than their ``motion_max_seq_length``.
        context_overlap: frames shared by neighbouring windows (smaller than ``context_frames``).
        context_fuse: how overlapping predictions are averaged: ``pyramid`` (weights peak in each window's
            middle, softer seams) or ``flat``.
    """
    _check_pixels(unet, height=height, width=width)
    if strength < 1 and latents is None:
        raise NodeInputError("strength < 1 needs input latents (video-to-video)", input="strength")
    given = noise if noise is not None else latents
    if given is not None:
        frames, height, width = None, None, None
    elif height is None or width is None:
        size = unet.module.config.sample_size * unet.vae_scale_factor
        height, width = height or size, width or size
    given_input = "frames" if given is None else "noise" if noise is not None else "latents"
    _check_denoise_memory(ctx, unet, conditioning, given, frames, height, width, guidance_scale, context_frames,
                          given_input)
    from .context_windows import ContextWindowError
    from .controlnet import ControlError

    try:
        tensor = sampling.denoise(
            unet, scheduler, conditioning, frames=frames, height=height, width=width, steps=steps,
            guidance_scale=guidance_scale, seed=seed, eta=eta,
            scheduler_type=None if scheduler_type == "default" else scheduler_type,
            noise=noise.tensor if noise is not None else None, latents=latents, strength=strength,
            progress=_report(ctx), context_frames=context_frames, context_overlap=context_overlap,
            context_fuse=context_fuse,
        )
    except (ContextWindowError, sampling.SamplingInputError) as exc:
        raise NodeInputError(str(exc), input=exc.input) from exc
    except ControlError as exc:
        raise NodeInputError(str(exc), input="conditioning") from exc
    return Latents(tensor)


@node("ddim_invert", category="sampling", output="noise")
def ddim_invert(
    unet: UNet3D,
    scheduler: Scheduler,
    conditioning: Conditioning,
    latents: Latents,
    ctx: RunContext,
    steps: Steps = 25,
    guidance_scale: Annotated[float, Field(ge=0, le=100)] = 1.0,
    context_frames: ContextFrames = None,
    context_overlap: ContextOverlap = 4,
    context_fuse: ContextFuse = "pyramid",
) -> Latents:
    """Invert clean latents with DDIM to the noise that DDIM would denoise back into them (Tune-A-Video).

    Feed the result to ``unet3d_denoise.noise`` with ``scheduler_type`` ``ddim`` and the same ``steps``.

    Args:
        unet: the model's UNet3D.
        scheduler: the model's scheduler configuration (the inverse DDIM scheduler is built from it).
        conditioning: the source clip's caption, from ``clip_text_encode``.
        latents: the clean latents of the source clip (``vae_encode``).
        steps: inversion steps (up to 1000, as in ``unet3d_denoise``).
        guidance_scale: classifier-free guidance during inversion; 1 (off) inverts most faithfully.
        context_frames: sliding temporal windows of this many frames, as in ``unet3d_denoise`` (use the same
            settings there); empty = the whole clip at once.
        context_overlap: frames shared by neighbouring windows (smaller than ``context_frames``).
        context_fuse: ``pyramid`` or ``flat`` averaging of overlapping predictions.
    """
    _check_denoise_memory(ctx, unet, conditioning, latents, None, None, None, guidance_scale, context_frames,
                          "latents")
    from .context_windows import ContextWindowError
    from .controlnet import ControlError

    try:
        tensor = sampling.ddim_invert(unet, scheduler, conditioning, latents, steps=steps,
                                      guidance_scale=guidance_scale, progress=_report(ctx),
                                      context_frames=context_frames, context_overlap=context_overlap,
                                      context_fuse=context_fuse)
    except (ContextWindowError, sampling.SamplingInputError) as exc:
        raise NodeInputError(str(exc), input=exc.input) from exc
    except ControlError as exc:
        raise NodeInputError(str(exc), input="conditioning") from exc
    return Latents(tensor)
