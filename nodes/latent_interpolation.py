"""Masked frame interpolation in latent space with the text-to-video UNet3D (Make-A-Video style).

``N`` keyframe latents become ``(N - 1) * m + 1`` latent frames, the keyframes at every ``m``-th position.
The same UNet3D that generated the keyframes fills in the frames between them, without any training: the
clip is denoised from noise as in text-to-video, and before every UNet evaluation the known positions are
overwritten with the keyframes noised to that step's level (``scheduler.add_noise`` at the step's
timestep). The model therefore always sees a noisy clip whose known frames are consistent with the noise
level, and its temporal layers pull the unknown frames towards motion that joins them. After the last step
the known positions are set to the keyframes themselves, so the output holds them exactly.

The keyframes are noised with one fixed draw (the starting noise at their positions), the noise a
deterministic DDIM path through those frames would carry. ``resample`` rounds add RePaint's remedy for
seams between known and generated content: after a step, the whole clip is re-noised back to the step's
level with fresh noise (``q(x_t | x_{t-1})``), the keyframes are put back, and the step is taken again,
giving the model more chances to harmonise the two; the last step is not resampled.

Sampling uses DDIM (deterministic, ``eta`` 0) built from the model's scheduler config, because the
re-noising needs its ``alphas_cumprod``. Context windows and ControlNet controls apply as in
:func:`reelgraph.nodes.sampling.denoise`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .sampling import (
    ProgressFn,
    _from_frames_batch,
    _guidance_embeds,
    _latent_shape,
    _module_device_dtype,
    _to_frames_batch,
    guided_predictor,
)
from .values import Conditioning, Latents, Scheduler, UNet3D

if TYPE_CHECKING:
    import torch

__all__ = ["interpolate_latents", "interpolated_length"]


def interpolated_length(keyframes: int, multiplier: int) -> int:
    """Frames of the interpolated clip: ``(keyframes - 1) * multiplier + 1``."""
    return (keyframes - 1) * multiplier + 1


def _renoise(sched: Any, x: torch.Tensor, t: int, generator: torch.Generator) -> torch.Tensor:
    """Take ``x`` at the level DDIM's step from ``t`` reached back to ``t``: ``q(x_t | x_prev)`` with fresh noise.

    The previous level is the one ``DDIMScheduler.step`` uses: ``t - T // steps``, or the final alpha below 0.
    """
    import torch

    prev = int(t) - sched.config.num_train_timesteps // sched.num_inference_steps
    alpha_t = sched.alphas_cumprod[int(t)]
    alpha_prev = sched.alphas_cumprod[prev] if prev >= 0 else sched.final_alpha_cumprod
    ratio = (alpha_t / alpha_prev).to(dtype=x.dtype)
    fresh = torch.randn(x.shape, generator=generator, device="cpu", dtype=x.dtype).to(x.device)
    return ratio.sqrt() * x + (1 - ratio).sqrt() * fresh


def interpolate_latents(
    unet: UNet3D,
    scheduler: Scheduler,
    conditioning: Conditioning,
    keyframes: Latents | torch.Tensor,
    multiplier: int,
    steps: int = 25,
    guidance_scale: float = 9.0,
    seed: int = 0,
    resample: int = 0,
    context_frames: int | None = None,
    context_overlap: int = 4,
    context_fuse: str = "pyramid",
    progress: ProgressFn | None = None,
) -> torch.Tensor:
    """Fill ``multiplier - 1`` latent frames between each pair of ``keyframes`` ``[B, C, N, h, w]``.

    Returns ``[B, C, (N - 1) * multiplier + 1, h, w]`` with ``out[:, :, ::multiplier]`` equal to the
    keyframes (exactly). ``seed`` draws the starting noise (``[B, C, F, h, w]``, on the CPU) and then the
    resampling noise. ``progress(done, total)`` is called after every UNet round: ``steps + resample *
    (steps - 1)`` in all. Raises ``ValueError`` for fewer than two keyframes, a multiplier below 2 or latents
    that do not fit the UNet, ``ContextWindowError``/``ControlError`` as ``denoise`` does.
    """
    import torch

    if multiplier < 2:
        raise ValueError(f"multiplier must be >= 2, got {multiplier}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if resample < 0:
        raise ValueError(f"resample must be >= 0, got {resample}")
    known = keyframes.tensor if isinstance(keyframes, Latents) else keyframes
    device, dtype = _module_device_dtype(unet.module)
    batch = int(conditioning.prompt_embeds.shape[0])
    b, c, n, h, w = _latent_shape(unet, batch, None, None, None, known)
    if n < 2:
        raise ValueError(f"interpolation needs at least 2 keyframes, got {n}")
    shape = (b, c, interpolated_length(n, multiplier), h, w)
    embeds, do_cfg = _guidance_embeds(conditioning, guidance_scale, device, dtype)
    predict = guided_predictor(unet, conditioning, embeds, do_cfg, guidance_scale, shape, context_frames,
                               context_overlap, context_fuse)

    sched = scheduler.create("ddim")
    sched.set_timesteps(steps, device=device)
    timesteps = sched.timesteps
    generator = torch.Generator("cpu").manual_seed(int(seed))
    known = known.to(device=device, dtype=dtype)
    with torch.no_grad():
        noise = torch.randn(shape, generator=generator, device="cpu", dtype=dtype).to(device)
        known_noise = noise[:, :, ::multiplier]
        x = noise * sched.init_noise_sigma
        total = len(timesteps) + resample * (len(timesteps) - 1)
        done = 0
        for i, t in enumerate(timesteps):
            level = sched.add_noise(known, known_noise, timesteps[i:i + 1].repeat(b))
            rounds = 1 + (resample if i < len(timesteps) - 1 else 0)
            for r in range(rounds):
                if r:
                    x = _renoise(sched, x, t, generator)
                x[:, :, ::multiplier] = level
                pred = predict(x, t, sched, i, len(timesteps))
                stepped = sched.step(_to_frames_batch(pred), t, _to_frames_batch(x)).prev_sample
                x = _from_frames_batch(stepped, b, shape[2]).contiguous()
                done += 1
                if progress is not None:
                    progress(done, total)
        x[:, :, ::multiplier] = known
    return x
