"""Sampling building blocks on the video UNets: prompt encoding, denoising, DDIM inversion and chunked VAE
encode/decode.

The loops here are reelgraph's own (the diffusers text-to-video pipelines are deprecated), but they follow
the pipelines' arithmetic step for step, including how and in which order random numbers are drawn, so
that for the same seed they give the same result as the family's diffusers pipelines with
``generator=torch.Generator("cpu").manual_seed(seed)``. The tests check that equality.

Two UNet families (``UNet3D.family``) run through the same loops:

* ``modelscope`` (``UNet3DConditionModel``): ``TextToVideoSDPipeline`` / ``VideoToVideoSDPipeline``. The
  UNet repeats the text states per frame itself; the pipelines step the scheduler on frame-major
  ``[B*F, C, h, w]`` latents, so random draws inside a step (DDIM's ``eta``) and video-to-video noise come
  in that layout.
* ``animatediff`` (``UNetMotionModel``): ``AnimateDiffPipeline`` / ``AnimateDiffVideoToVideoPipeline`` /
  ``AnimateDiffControlNetPipeline``. The UNet takes the text states already repeated per frame
  (``[N*F, L, D]``, ``repeat_interleave``), the pipelines step the scheduler on the ``[B, C, F, h, w]``
  latents as they are, and its motion modules take at most ``UNet3D.max_frames`` frames per call (longer
  clips need context windows; refused before any step otherwise).

Conventions:

* Pixel frames are ``[F, C, H, W]`` in ``[0, 1]`` (``Video``); the VAE sees them in ``[-1, 1]``.
* Latents are ``[B, C, F, h, w]`` and already multiplied by the VAE's ``scaling_factor``.
* Random numbers always come from a CPU ``torch.Generator`` seeded with ``seed`` and are moved to the
  model's device afterwards, so a seed gives the same noise on every device.
* ControlNet controls carried by the ``Conditioning`` are applied by ``denoise`` and ``ddim_invert`` (see
  :mod:`reelgraph.nodes.controlnet`); without controls the loops are exactly the pipelines'.
* Context windows (``context_frames``; see :mod:`reelgraph.nodes.context_windows`) make each step run the
  UNet3D per temporal window and average the overlapping predictions before one scheduler step on the whole
  clip. Off (``None``) or with one window covering the clip, the loops are exactly the windowless ones.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .context_windows import context_windows, fuse_predictions
from .controlnet import ControlError, PreparedControls, prepare_controls
from .values import VAE, Conditioning, Latents, Scheduler, TextEncoder, UNet3D, Video

if TYPE_CHECKING:
    import torch

__all__ = ["GuidedPredict", "ProgressFn", "ddim_invert", "denoise", "encode_prompt", "guided_predictor",
           "prepare_timesteps", "vae_decode", "vae_encode"]

logger = logging.getLogger(__name__)

#: ``progress(done, total)``: called after each step with the number of steps done so far. It may raise
#: (for example to cancel a run); the exception propagates out of the sampler unchanged.
ProgressFn = Callable[[int, int], None]
#: ``predict(x, t, scheduler, step, total)``: the guided model prediction for the whole clip ``x`` at ``t``.
GuidedPredict = Callable[["torch.Tensor", Any, Any, int, int], "torch.Tensor"]


def _module_device_dtype(module: Any) -> tuple[torch.device, torch.dtype]:
    """The device and dtype of a module's first parameter."""
    param = next(module.parameters())
    return param.device, param.dtype


def encode_prompt(
    text_encoder: TextEncoder,
    prompt: str | list[str],
    negative_prompt: str | list[str] | None = None,
    guidance: float | bool = 9.0,
) -> Conditioning:
    """Encode ``prompt`` (and, for classifier-free guidance, ``negative_prompt``) into a ``Conditioning``.

    This reproduces ``TextToVideoSDPipeline.encode_prompt``: prompts are padded to the tokenizer's
    ``model_max_length`` and truncated, the embeddings are the text model's last hidden state, and the
    negative embeddings (the empty prompt when ``negative_prompt`` is ``None``) are only computed when
    guidance is on. ``guidance`` is the guidance scale the conditioning is meant for (on when > 1, as in
    the pipeline) or a bool saying directly whether to compute the negative embeddings.
    """
    import torch

    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise ValueError("encode_prompt needs at least one prompt")
    do_cfg = guidance if isinstance(guidance, bool) else float(guidance) > 1.0
    tokenizer = text_encoder.tokenizer
    model = text_encoder.module
    device, dtype = _module_device_dtype(model)
    max_length = int(tokenizer.model_max_length)
    use_mask = bool(getattr(model.config, "use_attention_mask", False))

    def embed(texts: list[str], length: int) -> torch.Tensor:
        inputs = tokenizer(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        mask = inputs.attention_mask.to(device) if use_mask else None
        output = model(inputs.input_ids.to(device), attention_mask=mask)
        # The last hidden state, by name: CLIPTextModelWithProjection's first output is the pooled projection.
        return output.last_hidden_state.to(dtype=dtype, device=device)

    untruncated = tokenizer(prompts, padding="longest").input_ids
    if max(len(ids) for ids in untruncated) > max_length:
        logger.warning("prompt truncated to %d tokens (the text encoder's limit)", max_length)

    with torch.inference_mode():
        prompt_embeds = embed(prompts, max_length)
        negative_embeds = None
        if do_cfg:
            if negative_prompt is None:
                negatives = [""] * len(prompts)
            elif isinstance(negative_prompt, str):
                negatives = [negative_prompt] * len(prompts)
            else:
                negatives = list(negative_prompt)
                if len(negatives) != len(prompts):
                    raise ValueError(
                        f"got {len(negatives)} negative prompts for {len(prompts)} prompts; give one per prompt"
                    )
            negative_embeds = embed(negatives, prompt_embeds.shape[1])
    return Conditioning(prompt_embeds=prompt_embeds, negative_embeds=negative_embeds)


def _guidance_embeds(
    conditioning: Conditioning, guidance_scale: float, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, bool]:
    """The UNet's ``encoder_hidden_states``: ``[negative; positive]`` with guidance, else the positive."""
    import torch

    do_cfg = guidance_scale > 1.0
    positive = conditioning.prompt_embeds.to(device=device, dtype=dtype)
    if not do_cfg:
        return positive, False
    if conditioning.negative_embeds is None:
        raise ValueError(
            f"guidance_scale {guidance_scale} > 1 needs negative embeddings, but the conditioning has none; "
            "encode the prompt with guidance > 1"
        )
    negative = conditioning.negative_embeds.to(device=device, dtype=dtype)
    return torch.cat([negative, positive]), True


def _predict(
    module: Any, x: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor, do_cfg: bool, guidance_scale: float,
    scheduler: Any, controls: PreparedControls | None = None, step: int = 0, total: int = 1,
) -> torch.Tensor:
    """One UNet evaluation with optional classifier-free guidance, as the pipelines do it.

    ``embeds`` are the UNet's ``encoder_hidden_states`` as its family takes them (see :func:`_unet_embeds`).
    ``controls`` active at ``step`` of ``total`` add their ControlNet residuals to both guidance halves, as
    diffusers' AnimateDiff ControlNet pipeline does; when none is active the call is the plain one.
    """
    import torch

    model_input = torch.cat([x] * 2) if do_cfg else x
    model_input = scheduler.scale_model_input(model_input, t)
    residuals = controls.residuals(model_input, t, step, total) if controls else None
    if residuals is None:
        pred = module(model_input, t, encoder_hidden_states=embeds, return_dict=False)[0]
    else:
        pred = module(model_input, t, encoder_hidden_states=embeds, down_block_additional_residuals=residuals[0],
                      mid_block_additional_residual=residuals[1], return_dict=False)[0]
    if do_cfg:
        uncond, cond = pred.chunk(2)
        pred = uncond + guidance_scale * (cond - uncond)
    return pred


def _window_controls(conditioning: Conditioning, unet: UNet3D, embeds: torch.Tensor, frames: int,
                     windows: list[tuple[int, int]], height: int, width: int) -> list[PreparedControls]:
    """The conditioning's controls prepared once per window, with per-frame control images sliced to the
    window's frames (a single control frame serves every window)."""
    for control in conditioning.controls:
        n = int(control.frames.shape[0])
        if n not in (1, frames):
            raise ControlError(f"{control.controlnet!r} got {n} control frames for a {frames}-frame video; give "
                               "one per frame or a single frame for all")
    prepared = []
    for start, stop in windows:
        sliced = tuple(c if int(c.frames.shape[0]) == 1 else replace(c, frames=c.frames[start:stop])
                       for c in conditioning.controls)
        window_cond = Conditioning(conditioning.prompt_embeds, conditioning.negative_embeds, sliced)
        prepared.append(prepare_controls(window_cond, unet, embeds, stop - start, height, width))
    return prepared


def _unet_embeds(unet: UNet3D, embeds: torch.Tensor, frames: int) -> torch.Tensor:
    """``encoder_hidden_states`` for a call on ``frames`` frames: AnimateDiff's UNet takes them repeated per
    frame (``[N*F, L, D]``, as its pipelines pass them); ModelScope's repeats ``[N, L, D]`` itself."""
    if unet.family == "animatediff":
        return embeds.repeat_interleave(frames, dim=0)
    return embeds


def _check_frames_per_call(unet: UNet3D, frames: int, windows: list[tuple[int, int]], context_frames: int | None,
                           frames_input: str) -> None:
    """Refuse a UNet call on more frames than the motion modules' positional encoding holds (AnimateDiff),
    before any step, naming the setting to change (``frames_input`` when windows are off)."""
    limit = unet.max_frames
    longest = max(stop - start for start, stop in windows)
    if limit is None or longest <= limit:
        return
    hint = f"set context_frames to at most {limit} (16 is what most motion modules were trained on)"
    if context_frames is None:
        raise SamplingInputError(f"the clip has {frames} frames, but the motion modules of {unet.source!r} take at "
                                 f"most {limit} frames per UNet call (motion_max_seq_length); {hint} to run it in "
                                 "sliding context windows", input=frames_input)
    raise SamplingInputError(f"context_frames={context_frames} is more than the {limit} frames per UNet call that "
                             f"the motion modules of {unet.source!r} take (motion_max_seq_length); {hint}",
                             input="context_frames")


def guided_predictor(
    unet: UNet3D, conditioning: Conditioning, embeds: torch.Tensor, do_cfg: bool, guidance_scale: float,
    shape: tuple[int, int, int, int, int], context_frames: int | None = None, context_overlap: int = 4,
    context_fuse: str = "pyramid", frames_input: str = "frames",
) -> GuidedPredict:
    """The guided UNet3D prediction for latents of ``shape``, per context window when windows are on.

    ``embeds``/``do_cfg`` come from the conditioning (``[negative; positive]`` with guidance); they are
    repeated per frame here for a family whose UNet takes them so, once per window length. The
    conditioning's ControlNet controls are checked and laid out here, before any step: for the whole clip
    or, with several windows, once per window with their frames sliced to it. With a single window (windows
    off or ``context_frames >= frames``) the prediction is exactly the plain ``_predict`` call. Raises
    ``ContextWindowError`` for impossible window settings, ``ControlError`` for controls that do not fit and
    ``SamplingInputError`` (naming ``frames_input`` or ``context_frames``) for more frames per UNet call
    than the UNet takes.
    """
    module = unet.module
    _, _, frames, lat_h, lat_w = shape
    height, width = lat_h * int(unet.vae_scale_factor), lat_w * int(unet.vae_scale_factor)
    windows = context_windows(frames, context_frames, context_overlap, context_fuse)
    _check_frames_per_call(unet, frames, windows, context_frames, frames_input)
    if len(windows) == 1:
        controls = prepare_controls(conditioning, unet, embeds, frames, height, width)
        unet_embeds = _unet_embeds(unet, embeds, frames)

        def predict(x: torch.Tensor, t: Any, sched: Any, step: int, total: int) -> torch.Tensor:
            return _predict(module, x, t, unet_embeds, do_cfg, guidance_scale, sched, controls, step, total)

        return predict
    per_window = _window_controls(conditioning, unet, embeds, frames, windows, height, width)
    per_length = {n: _unet_embeds(unet, embeds, n) for n in {stop - start for start, stop in windows}}

    def predict_windows(x: torch.Tensor, t: Any, sched: Any, step: int, total: int) -> torch.Tensor:
        def one(index: int, start: int, stop: int) -> torch.Tensor:
            return _predict(module, x[:, :, start:stop], t, per_length[stop - start], do_cfg, guidance_scale, sched,
                            per_window[index], step, total)

        return fuse_predictions(one, windows, context_fuse)

    return predict_windows


def _to_frames_batch(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, F, h, w]`` -> ``[B*F, C, h, w]`` (frame-major), the layout the pipelines step and noise in."""
    b, c, f, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)


def _from_frames_batch(x: torch.Tensor, b: int, f: int) -> torch.Tensor:
    """Inverse of ``_to_frames_batch``."""
    _, c, h, w = x.shape
    return x[None, :].reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)


class SamplingInputError(ValueError):
    """Latents, noise or conditioning that do not fit the UNet3D; ``input`` names which (for node errors)."""

    def __init__(self, message: str, input: str) -> None:
        super().__init__(message)
        self.input = input


def _check_conditioning(unet: UNet3D, conditioning: Conditioning) -> None:
    """Refuse conditioning encoded by a text encoder of another width than the UNet3D cross-attends to."""
    width = int(conditioning.prompt_embeds.shape[-1])
    expected = int(unet.module.config.cross_attention_dim)
    if width != expected:
        raise SamplingInputError(f"the conditioning is {width} wide; this UNet3D cross-attends to {expected}: "
                                 "encode the prompt with the same model's text encoder", input="conditioning")


def _latent_shape(
    unet: UNet3D,
    batch: int,
    frames: int | None,
    height: int | None,
    width: int | None,
    given: torch.Tensor | None,
    given_name: str = "latents",
) -> tuple[int, int, int, int, int]:
    """The latent shape from pixel sizes, or from a given tensor (checking any sizes that were also given);
    ``given_name`` is the input the tensor came from, named by the ``SamplingInputError`` it may raise."""
    channels = int(unet.module.config.in_channels)
    factor = int(unet.vae_scale_factor)
    if given is not None:
        if given.ndim != 5 or int(given.shape[1]) != channels:
            raise SamplingInputError(f"{given_name} has shape {tuple(given.shape)}; this UNet3D takes [batch, "
                                     f"{channels}, frames, height, width] latents (from this model's VAE)",
                                     input=given_name)
        b, c, f, h, w = (int(s) for s in given.shape)
        expected = {"frames": f, "height": h * factor, "width": w * factor}
        for name, value in (("frames", frames), ("height", height), ("width", width)):
            if value is not None and value != expected[name]:
                raise SamplingInputError(f"{name}={value} does not match the given tensor of shape "
                                         f"{tuple(given.shape)} ({name} {expected[name]} at VAE factor {factor})",
                                         input=name)
        if b != batch:
            raise SamplingInputError(f"the given tensor has batch {b} but the conditioning has batch {batch}",
                                     input=given_name)
        return b, c, f, h, w
    if frames is None or height is None or width is None:
        raise ValueError("frames, height and width are required when neither latents nor noise is given")
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if height % factor or width % factor or height <= 0 or width <= 0:
        raise ValueError(f"height and width must be positive multiples of the VAE factor {factor}, "
                         f"got {height}x{width}")
    return batch, channels, frames, height // factor, width // factor


def _timesteps_fit(sched: Any, ascending: bool) -> bool:
    """Whether ``sched.timesteps`` are distinct training timesteps ``0 <= t < num_train_timesteps``, in order."""
    import torch

    t = sched.timesteps.double()
    last = int(sched.config.num_train_timesteps) - 1
    steps = t.diff()
    ordered = bool((steps > 0).all()) if ascending else bool((steps < 0).all())
    return bool(len(t)) and ordered and bool((t >= 0).all()) and bool((t <= last).all()) and bool(
        torch.isfinite(t).all())


def prepare_timesteps(sched: Any, steps: int, device: Any = None, ascending: bool = False) -> Any:
    """Set ``steps`` timesteps on ``sched`` and return the scheduler to sample with (``sched`` or a copy).

    With the usual ``leading`` spacing and ``steps_offset=1``, ``steps`` equal to the number of training
    timesteps (1000, the documented maximum) gives timesteps ``1..1000``, one past the last one the
    scheduler has an ``alphas_cumprod`` for (IndexError in DDIM, DDIM inversion and DPM-Solver++; DPM-Solver++
    also at 999). Where the timesteps are not distinct training timesteps in order, the scheduler is rebuilt
    with ``trailing`` spacing, which spreads any number of steps up to the training count over
    ``num_train_timesteps - 1 .. 0``. Every other ``steps`` keeps the scheduler's own timesteps, so results
    still equal the diffusers pipelines'. ``ascending`` is for the inverse scheduler.
    """
    sched.set_timesteps(steps, device=device)
    if _timesteps_fit(sched, ascending):
        return sched
    trailing = type(sched).from_config(sched.config, timestep_spacing="trailing")
    trailing.set_timesteps(steps, device=device)
    if not _timesteps_fit(trailing, ascending):
        raise ValueError(f"{type(sched).__name__} cannot take {steps} steps over "
                         f"{sched.config.num_train_timesteps} training timesteps")
    return trailing


def denoise(
    unet: UNet3D,
    scheduler: Scheduler,
    conditioning: Conditioning,
    frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    steps: int = 50,
    guidance_scale: float = 9.0,
    seed: int = 0,
    eta: float = 0.0,
    scheduler_type: str | None = None,
    noise: torch.Tensor | None = None,
    latents: Latents | torch.Tensor | None = None,
    strength: float = 1.0,
    progress: ProgressFn | None = None,
    context_frames: int | None = None,
    context_overlap: int = 4,
    context_fuse: str = "pyramid",
) -> torch.Tensor:
    """Run the reverse diffusion on the UNet3D and return the final latents ``[B, C, F, h, w]``.

    Text-to-video (``latents is None``): starts from ``noise`` (a standard normal ``[B, C, F, h, w]``
    tensor) or, when ``noise`` is ``None``, from noise drawn exactly as ``TextToVideoSDPipeline`` and
    ``AnimateDiffPipeline`` draw it; ``height``/``width`` are in pixels and must divide by the VAE factor.
    The result equals the family's pipeline's latents for ``generator=torch.Generator("cpu").manual_seed(seed)``.

    Video-to-video (``latents`` given, ``0 < strength <= 1``): skips the first ``steps - int(steps *
    strength)`` timesteps and noises ``latents`` to the first remaining one, with ``noise`` or with noise
    drawn as the family's pipeline draws it when handed latents: ``VideoToVideoSDPipeline`` one
    ``[B*F, C, h, w]`` draw (frame-major), ``AnimateDiffVideoToVideoPipeline`` one ``[B, C, F, h, w]`` draw
    (its ``latents=`` path with ``enforce_inference_steps=True`` and ``num_inference_steps = int(steps *
    strength)``), so it equals that pipeline for the same seed. Given ``noise`` is always ``[B, C, F, h, w]``.

    ``scheduler_type`` picks ``"ddim"``, ``"dpm++"`` or ``"euler"`` built from the model's scheduler config,
    or the model's own scheduler (``None``); a fresh scheduler is built for every call. ``eta`` only
    affects DDIM. ``progress(done, total)`` is called after every step.

    The conditioning's ControlNet controls steer the steps in their ``start``/``end`` window, counted over
    the steps this call runs (as the diffusers ControlNet pipelines count them); a ControlNet that does not
    fit the UNet3D, or control frames that do not fit the video, raise ``ControlError`` before any step.

    ``context_frames`` (``None`` = off) runs the UNet3D on overlapping temporal windows of that many frames,
    neighbours sharing ``context_overlap`` frames, and averages the overlaps with ``context_fuse`` weights
    (``flat`` or ``pyramid``; see :mod:`reelgraph.nodes.context_windows`); the scheduler steps the whole
    clip. With ``context_frames >= frames`` the result is exactly the windowless one.
    """
    import torch

    module = unet.module
    device, dtype = _module_device_dtype(module)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    init = latents.tensor if isinstance(latents, Latents) else latents
    if init is None and strength != 1.0:
        raise ValueError("strength < 1 needs input latents (video-to-video); text-to-video always uses 1.0")
    _check_conditioning(unet, conditioning)
    embeds, do_cfg = _guidance_embeds(conditioning, guidance_scale, device, dtype)
    batch = int(conditioning.prompt_embeds.shape[0])
    shape = _latent_shape(unet, batch, frames, height, width, init if init is not None else noise,
                          "latents" if init is not None else "noise")
    if noise is not None and tuple(noise.shape) != shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {shape}")

    b, _, f, _, _ = shape
    predict = guided_predictor(unet, conditioning, embeds, do_cfg, guidance_scale, shape, context_frames,
                               context_overlap, context_fuse,
                               frames_input="frames" if init is None and noise is None else
                               "latents" if init is not None else "noise")
    # ModelScope's pipelines step (and draw step noise) on frame-major [B*F, C, h, w]; AnimateDiff's on 5-D.
    frame_major = unet.family != "animatediff"

    sched = prepare_timesteps(scheduler.create(scheduler_type), steps, device)
    timesteps = sched.timesteps
    generator = torch.Generator("cpu").manual_seed(int(seed))

    with torch.inference_mode():
        if init is None:
            if noise is None:
                noise = torch.randn(shape, generator=generator, device="cpu", dtype=dtype)
            x = noise.to(device=device, dtype=dtype) * sched.init_noise_sigma
        else:
            kept = min(int(steps * strength), steps)
            if kept < 1:
                raise ValueError(f"steps*strength = {steps}*{strength} leaves no denoising step to run")
            t_start = (steps - kept) * sched.order
            timesteps = timesteps[t_start:]
            if hasattr(sched, "set_begin_index"):
                sched.set_begin_index(t_start)
            init = init.to(device=device, dtype=dtype)
            if not frame_major:
                if noise is None:
                    noise = torch.randn(shape, generator=generator, device="cpu", dtype=dtype)
                x = sched.add_noise(init, noise.to(device=device, dtype=dtype), timesteps[:1].repeat(b))
            else:
                init_flat = _to_frames_batch(init)
                if noise is None:
                    noise_flat = torch.randn(init_flat.shape, generator=generator, device="cpu", dtype=dtype)
                else:
                    noise_flat = _to_frames_batch(noise)
                noise_flat = noise_flat.to(device=device, dtype=dtype)
                noised = sched.add_noise(init_flat, noise_flat, timesteps[:1].repeat(b))
                x = _from_frames_batch(noised, b, f)

        params = set(inspect.signature(sched.step).parameters)
        step_kwargs: dict[str, Any] = {}
        if "eta" in params:
            step_kwargs["eta"] = eta
        if "generator" in params:
            step_kwargs["generator"] = generator

        total = len(timesteps)
        for i, t in enumerate(timesteps):
            pred = predict(x, t, sched, i, total)
            if frame_major:
                stepped = sched.step(_to_frames_batch(pred), t, _to_frames_batch(x), **step_kwargs).prev_sample
                x = _from_frames_batch(stepped, b, f)
            else:
                x = sched.step(pred, t, x, **step_kwargs).prev_sample
            if progress is not None:
                progress(i + 1, total)
    return x.contiguous()


def _inverse_scheduler(scheduler: Scheduler, steps: int, device: Any) -> Any:
    """``DDIMInverseScheduler`` from the model's config with ``steps`` ascending timesteps.

    It knows ``leading`` and ``trailing`` spacing only; for another spacing (AnimateDiff's ``linspace``) its
    timesteps are set to the forward ``DDIMScheduler``'s, reversed. Both schedulers step by
    ``num_train_timesteps // steps`` whatever the spacing, so each inverse step undoes one forward step and the
    round trip stays exact where the prediction ignores the latents.
    """
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    config = dict(scheduler.config)
    inverse = DDIMInverseScheduler.from_config(config, clip_sample=config.get("clip_sample", False))
    if inverse.config.timestep_spacing in ("leading", "trailing"):
        return prepare_timesteps(inverse, steps, device, ascending=True)
    forward = prepare_timesteps(DDIMScheduler.from_config(config), steps, device)
    inverse.num_inference_steps = steps
    inverse.timesteps = forward.timesteps.flip(0)
    return inverse


def ddim_invert(
    unet: UNet3D,
    scheduler: Scheduler,
    conditioning: Conditioning,
    latents: Latents | torch.Tensor,
    steps: int,
    guidance_scale: float = 1.0,
    progress: ProgressFn | None = None,
    context_frames: int | None = None,
    context_overlap: int = 4,
    context_fuse: str = "pyramid",
) -> torch.Tensor:
    """Run DDIM backwards from clean ``latents`` to the noise that DDIM would denoise into them.

    Uses ``DDIMInverseScheduler`` built from the model's scheduler config (ascending timesteps, the UNet
    evaluated at each destination timestep, as Tune-A-Video does; for a spacing it lacks, such as
    AnimateDiff's ``linspace``, the forward DDIM timesteps reversed). ``clip_sample`` defaults to off when the
    config does not say, because the inverse scheduler's own default clips latents to [-1, 1]. The result is
    meant as ``noise`` for ``denoise`` with a DDIM scheduler (whose ``init_noise_sigma`` is 1) and the same
    ``steps``; the round trip is exact only when the UNet's prediction barely depends on its input.

    ControlNet controls in the conditioning apply as in ``denoise``, with inversion step ``i`` of ``n``
    counted as denoising step ``n - 1 - i`` (the one at the same noise level), so a ``start``/``end``
    window covers the same noise levels in the inversion as in the denoising it mirrors.

    ``context_frames``/``context_overlap``/``context_fuse`` are the temporal context windows of ``denoise``.
    """
    import torch

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    device, dtype = _module_device_dtype(unet.module)
    x = latents.tensor if isinstance(latents, Latents) else latents
    _check_conditioning(unet, conditioning)
    batch = int(conditioning.prompt_embeds.shape[0])
    shape = _latent_shape(unet, batch, None, None, None, x)
    embeds, do_cfg = _guidance_embeds(conditioning, guidance_scale, device, dtype)
    predict = guided_predictor(unet, conditioning, embeds, do_cfg, guidance_scale, shape, context_frames,
                               context_overlap, context_fuse, frames_input="latents")
    inverse = _inverse_scheduler(scheduler, steps, device)
    x = x.to(device=device, dtype=dtype)
    total = len(inverse.timesteps)
    with torch.inference_mode():
        for i, t in enumerate(inverse.timesteps):
            pred = predict(x, t, inverse, total - 1 - i, total)
            x = inverse.step(pred, t, x).prev_sample
            if progress is not None:
                progress(i + 1, total)
    return x


def _check_chunk(chunk_frames: int) -> int:
    """Validate the chunk size."""
    if int(chunk_frames) < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    return int(chunk_frames)


def vae_encode(
    vae: VAE,
    video: Video,
    chunk_frames: int = 8,
    generator: torch.Generator | None = None,
    progress: ProgressFn | None = None,
) -> Latents:
    """Encode a ``Video`` into scaled ``Latents`` ``[1, C, F, H/f, W/f]``, ``chunk_frames`` frames at a time.

    Frames are mapped to ``[-1, 1]`` as the pipelines do. Without ``generator`` the latents are the
    posterior mean (deterministic, the usual choice for editing); with one they are a posterior sample
    ``mean + std * n``, with ``n`` drawn for all frames at once before encoding, so the result does not
    depend on the chunking and equals ``VideoToVideoSDPipeline``'s sample for the same generator state.
    The output is preallocated, so peak memory depends on ``chunk_frames``, not on the number of chunks.
    ``progress(frames_done, total)`` is called after each chunk.
    """
    import torch

    chunk = _check_chunk(chunk_frames)
    module = vae.module
    device, dtype = _module_device_dtype(module)
    frames = video.frames
    n, _, height, width = (int(s) for s in frames.shape)
    factor = vae.scale_factor
    if height % factor or width % factor:
        raise ValueError(f"video size {height}x{width} must be divisible by the VAE factor {factor}; "
                         "resize or crop it first")
    if n % vae.temporal_factor:
        raise ValueError(f"{n} frames must be divisible by the VAE's temporal factor {vae.temporal_factor}")
    channels = int(module.config.latent_channels)
    lat_shape = (n, channels, height // factor, width // factor)
    out = torch.empty((1, channels, n, height // factor, width // factor), device=device, dtype=dtype)
    draws = None
    if generator is not None:
        draws = torch.randn(lat_shape, generator=generator, device=generator.device, dtype=dtype)
    with torch.inference_mode():
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            pixels = frames[start:stop].to(device=device, dtype=dtype) * 2.0 - 1.0
            dist = module.encode(pixels).latent_dist
            z = dist.mean if draws is None else dist.mean + dist.std * draws[start:stop].to(device)
            out[0, :, start:stop] = (z * vae.scaling_factor).permute(1, 0, 2, 3)
            if progress is not None:
                progress(stop, n)
    return Latents(tensor=out)


def decode_input(vae: VAE, latents: Latents | torch.Tensor) -> tuple[torch.Tensor, int, int, int]:
    """Check latents for decoding (``[1, C, F, h, w]`` with the VAE's channel count); the tensor and F, h, w."""
    tensor = latents.tensor if isinstance(latents, Latents) else latents
    if tensor.ndim != 5 or tensor.shape[0] != 1:
        raise ValueError(f"vae_decode takes latents of shape [1, C, F, h, w], got {tuple(tensor.shape)}")
    _, channels, n, h, w = (int(s) for s in tensor.shape)
    if channels != int(vae.module.config.latent_channels):
        raise ValueError(f"the VAE takes {vae.module.config.latent_channels} latent channels, got {channels}")
    return tensor, n, h, w


def vae_decode(
    vae: VAE,
    latents: Latents | torch.Tensor,
    chunk_frames: int = 8,
    fps: float = 8.0,
    progress: ProgressFn | None = None,
) -> Video:
    """Decode scaled latents ``[1, C, F, h, w]`` into a float32 CPU ``Video`` in ``[0, 1]``, in chunks.

    Matches the pipelines' ``decode_latents`` + ``postprocess_video(output_type="pt")``: divide by the
    scaling factor, decode each frame, map ``[-1, 1]`` to ``[0, 1]`` and clamp. The output is preallocated,
    so peak memory depends on ``chunk_frames``, not on the number of chunks. ``fps`` is stamped on the
    result, since latents carry no frame rate. ``progress(frames_done, total)`` is called after each chunk.
    """
    import torch

    chunk = _check_chunk(chunk_frames)
    tensor, n, h, w = decode_input(vae, latents)
    module = vae.module
    device, dtype = _module_device_dtype(module)
    factor = vae.scale_factor
    out_channels = int(module.config.out_channels)
    out = torch.empty((n, out_channels, h * factor, w * factor), dtype=torch.float32)
    inv_scale = 1 / vae.scaling_factor
    with torch.inference_mode():
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            z = tensor[0, :, start:stop].permute(1, 0, 2, 3).to(device=device, dtype=dtype)
            image = module.decode(inv_scale * z).sample.float()
            out[start:stop] = (image * 0.5 + 0.5).clamp(0, 1).cpu()
            if progress is not None:
                progress(stop, n)
    return Video(frames=out, fps=fps)
