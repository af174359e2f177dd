"""AnimateDiff (``UNetMotionModel``) through reelgraph's sampling loops, against diffusers' three AnimateDiff
pipelines on the same tiny model and seed: text-to-video, video-to-video (from pixels and from latents) and
per-frame SD ControlNet; DDIM inversion; the motion modules' frame limit and context windows.

reelgraph's side loads ``builtin:tiny-animatediff`` and ``builtin:tiny-animatediff-controlnet`` through
``load_model`` / ``load_controlnet``; diffusers' side loads the same folders with its own ``from_pretrained``."""

from __future__ import annotations

import copy
import warnings

import pytest

torch = pytest.importorskip("torch")
for _name in ("diffusers", "transformers", "safetensors"):
    pytest.importorskip(_name)

from reelgraph.nodes.controlnet import check_compatible  # noqa: E402
from reelgraph.nodes.sampling import (  # noqa: E402
    SamplingInputError,
    ddim_invert,
    denoise,
    encode_prompt,
    vae_decode,
    vae_encode,
)
from reelgraph.nodes.values import Conditioning, Control, ControlNet, Latents, UNet3D, Video  # noqa: E402

PROMPT = "a red ball bouncing on a green field"
NEGATIVE = "blurry, low quality"
FRAMES, HEIGHT, WIDTH, STEPS, GUIDANCE = 8, 32, 32, 8, 7.5


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def ad(reelgraph_home) -> tuple:
    """(UNet3D, VAE, TextEncoder, Scheduler) of ``builtin:tiny-animatediff``, through ``load_model``."""
    from reelgraph.nodes.model_loading import clear_model_cache, load_model

    yield load_model("builtin:tiny-animatediff", device="cpu")
    clear_model_cache()


@pytest.fixture(scope="module")
def t2v_pipe(ad):
    """``AnimateDiffPipeline`` loaded by diffusers itself from the builtin folder."""
    from diffusers import AnimateDiffPipeline

    from reelgraph.nodes.animatediff.tiny import ensure_tiny_animatediff

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = AnimateDiffPipeline.from_pretrained(ensure_tiny_animatediff(), local_files_only=True)
    assert type(pipe.scheduler).__name__ == ad[3].class_name == "DDIMScheduler"
    assert pipe.scheduler.config.timestep_spacing == "linspace"  # AnimateDiff's inference schedule
    return _quiet(pipe)


@pytest.fixture(scope="module")
def cond(ad) -> Conditioning:
    return encode_prompt(ad[2], PROMPT, NEGATIVE, GUIDANCE)


def _set_scheduler(pipe, kind: str | None, config: dict) -> None:
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    cls = {None: DDIMScheduler, "ddim": DDIMScheduler, "dpm++": DPMSolverMultistepScheduler,
           "euler": EulerDiscreteScheduler}[kind]
    pipe.scheduler = cls.from_config(config)


def _frames(pipe_output) -> torch.Tensor:
    """The pipeline's ``output_type="pt"`` frames ``[1, F, C, H, W]`` as reelgraph's ``[F, C, H, W]``."""
    return pipe_output.frames[0]


def test_the_handle_names_the_family_and_its_frame_limit(ad) -> None:
    unet = ad[0]
    assert type(unet.module).__name__ == "UNetMotionModel"
    assert unet.family == "animatediff"
    assert unet.max_frames == int(unet.module.config.motion_max_seq_length)


def test_encode_prompt_matches_the_pipeline(ad, t2v_pipe, cond) -> None:
    ref_pos, ref_neg = t2v_pipe.encode_prompt(PROMPT, "cpu", 1, True, NEGATIVE)
    assert torch.equal(cond.prompt_embeds, ref_pos)
    assert torch.equal(cond.negative_embeds, ref_neg)


@pytest.mark.parametrize(("kind", "eta", "guidance"), [
    (None, 0.0, GUIDANCE), (None, 0.8, GUIDANCE), (None, 0.0, 1.0), ("dpm++", 0.0, GUIDANCE),
    ("euler", 0.0, GUIDANCE)])
def test_t2v_matches_animatediff_pipeline(ad, t2v_pipe, kind: str | None, eta: float, guidance: float) -> None:
    unet, vae, text, scheduler = ad
    _set_scheduler(t2v_pipe, kind, scheduler.config)
    ref = _frames(t2v_pipe(
        PROMPT, negative_prompt=NEGATIVE, num_frames=FRAMES, height=HEIGHT, width=WIDTH,
        num_inference_steps=STEPS, guidance_scale=guidance, eta=eta,
        generator=torch.Generator("cpu").manual_seed(1234), output_type="pt"))
    conditioning = encode_prompt(text, PROMPT, NEGATIVE, guidance)
    latents = denoise(unet, scheduler, conditioning, FRAMES, HEIGHT, WIDTH, STEPS, guidance, 1234, eta=eta,
                      scheduler_type=kind)
    video = vae_decode(vae, latents, chunk_frames=3)
    assert video.frames.shape == ref.shape == (FRAMES, 3, HEIGHT, WIDTH)
    diff = (video.frames - ref).abs().max().item()
    print(f"AnimateDiff t2v scheduler={kind or 'model(ddim)'} eta={eta} guidance={guidance}: max abs diff {diff:.3g}")
    assert diff <= 1e-4
    assert ref.std() > 0.01  # the frames are not flat: the comparison means something


@pytest.fixture(scope="module")
def v2v_pipe(t2v_pipe):
    """``AnimateDiffVideoToVideoPipeline`` sharing the text-to-video pipeline's modules."""
    from diffusers import AnimateDiffVideoToVideoPipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _quiet(AnimateDiffVideoToVideoPipeline(**t2v_pipe.components))


@pytest.mark.parametrize("kind", [None, "euler"])
def test_v2v_matches_pipeline_from_latents(ad, v2v_pipe, cond, kind: str | None) -> None:
    """The pipeline's ``latents=`` path noises them itself with ``enforce_inference_steps``: it then runs
    ``num_inference_steps`` of a schedule of ``int(num_inference_steps / strength)``, which is reelgraph's
    ``steps`` with ``int(steps * strength)`` of them run."""
    unet, vae, _, scheduler = ad
    _set_scheduler(v2v_pipe, kind, scheduler.config)
    source = Video(torch.rand(FRAMES, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(7)))
    latents = vae_encode(vae, source, chunk_frames=3)
    strength, run_steps = 0.5, 4
    ref = _frames(v2v_pipe(
        prompt=PROMPT, latents=latents.tensor.clone(), negative_prompt=NEGATIVE, strength=strength,
        num_inference_steps=run_steps, enforce_inference_steps=True, guidance_scale=GUIDANCE, height=HEIGHT,
        width=WIDTH, generator=torch.Generator("cpu").manual_seed(99), output_type="pt"))
    steps = int(run_steps / strength)
    seen: list[int] = []
    out = denoise(unet, scheduler, cond, latents=latents, steps=steps, guidance_scale=GUIDANCE, seed=99,
                  strength=strength, scheduler_type=kind, progress=lambda i, n: seen.append(n))
    assert seen and seen[-1] == run_steps
    diff = (vae_decode(vae, out).frames - ref).abs().max().item()
    print(f"AnimateDiff v2v (latents) scheduler={kind or 'model(ddim)'} strength={strength}: max abs diff {diff:.3g}")
    assert diff <= 1e-4


def test_v2v_matches_pipeline_from_pixels(ad, v2v_pipe, cond) -> None:
    """The pixel path: the pipeline samples the VAE posterior, then draws the noise (frame-major, as the
    encoded ``[B, F, C, h, w]`` latents are laid out) from the same generator."""
    unet, vae, _, scheduler = ad
    _set_scheduler(v2v_pipe, None, scheduler.config)
    pixels = torch.rand(FRAMES, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(8))
    ref = _frames(v2v_pipe(
        prompt=PROMPT, video=pixels[None], negative_prompt=NEGATIVE, strength=0.6, num_inference_steps=STEPS,
        guidance_scale=GUIDANCE, height=HEIGHT, width=WIDTH, generator=torch.Generator("cpu").manual_seed(5),
        output_type="pt"))
    gen = torch.Generator("cpu").manual_seed(5)
    latents = vae_encode(vae, Video(pixels), chunk_frames=FRAMES, generator=gen)
    factor = vae.scale_factor
    noise = torch.randn((1, FRAMES, 4, HEIGHT // factor, WIDTH // factor), generator=gen).permute(0, 2, 1, 3, 4)
    out = denoise(unet, scheduler, cond, latents=latents, steps=STEPS, guidance_scale=GUIDANCE, seed=5,
                  strength=0.6, noise=noise)
    diff = (vae_decode(vae, out).frames - ref).abs().max().item()
    print(f"AnimateDiff v2v (pixels) strength=0.6: max abs diff {diff:.3g}")
    assert diff <= 1e-4


# -------------------------------------------------------------------------------------------- ControlNet


@pytest.fixture(scope="module")
def controlnet(reelgraph_home) -> ControlNet:
    from reelgraph.nodes.controlnet import clear_controlnet_cache, load_controlnet

    yield load_controlnet("builtin:tiny-animatediff-controlnet", device="cpu")
    clear_controlnet_cache()


def test_sd_controlnet_fits_the_motion_unet_and_another_is_refused(ad, controlnet) -> None:
    from reelgraph.nodes.controlnet import ControlError, load_controlnet

    check_compatible(controlnet, ad[0])  # raises ControlError when it does not fit
    modelscope_cn = load_controlnet("builtin:tiny", device="cpu")  # made for builtin:tiny's UNet3D
    with pytest.raises(ControlError, match="does not fit the UNet3D 'builtin:tiny-animatediff'") as info:
        check_compatible(modelscope_cn, ad[0])
    assert "channels" in str(info.value) and "1/4" in str(info.value)


@pytest.mark.parametrize(("scale", "start", "end"), [(1.0, 0.0, 1.0), (0.7, 0.25, 0.75)])
def test_controlnet_matches_animatediff_controlnet_pipeline(ad, t2v_pipe, cond, controlnet, scale: float,
                                                            start: float, end: float) -> None:
    from diffusers import AnimateDiffControlNetPipeline, ControlNetModel

    from reelgraph.nodes.animatediff.tiny_controlnet import ensure_tiny_animatediff_controlnet

    unet, vae, _, scheduler = ad
    control = torch.rand(FRAMES, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(21))
    components = {k: v for k, v in t2v_pipe.components.items() if k != "feature_extractor"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference_cn = ControlNetModel.from_pretrained(ensure_tiny_animatediff_controlnet(), local_files_only=True)
        pipe = _quiet(AnimateDiffControlNetPipeline(**{**components, "controlnet": reference_cn}))
    _set_scheduler(pipe, None, scheduler.config)
    ref = _frames(pipe(
        PROMPT, negative_prompt=NEGATIVE, num_frames=FRAMES, height=HEIGHT, width=WIDTH,
        num_inference_steps=STEPS, guidance_scale=GUIDANCE, conditioning_frames=list(control),
        controlnet_conditioning_scale=scale, control_guidance_start=start, control_guidance_end=end,
        generator=torch.Generator("cpu").manual_seed(31), output_type="pt"))
    controlled = cond.with_control(Control(controlnet, control, scale=scale, start=start, end=end))
    out = vae_decode(vae, denoise(unet, scheduler, controlled, FRAMES, HEIGHT, WIDTH, STEPS, GUIDANCE, 31))
    diff = (out.frames - ref).abs().max().item()
    plain = vae_decode(vae, denoise(unet, scheduler, cond, FRAMES, HEIGHT, WIDTH, STEPS, GUIDANCE, 31))
    effect = (plain.frames - ref).abs().max().item()
    print(f"AnimateDiff ControlNet scale={scale} window=[{start}, {end}]: max abs diff {diff:.3g} "
          f"(the control changes frames by {effect:.3g})")
    assert diff <= 1e-4
    assert effect > 1e-2  # the ControlNet really steers: equality is not the plain run's


# ------------------------------------------------------------------------------------------ DDIM inversion


def _reference_inversion(module, config: dict, embeds: torch.Tensor, x0: torch.Tensor, steps: int) -> torch.Tensor:
    """DDIM inversion written here on ``DDIMInverseScheduler`` as AnimateDiff's UNet takes its text states
    (repeated per frame), independent of the product's loop. The inverse scheduler lacks AnimateDiff's
    ``linspace`` spacing, so it visits the forward DDIM timesteps in reverse."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    assert config["timestep_spacing"] == "linspace"
    forward = DDIMScheduler.from_config(config)
    forward.set_timesteps(steps)
    inverse = DDIMInverseScheduler.from_config(config, clip_sample=False)
    inverse.num_inference_steps = steps
    inverse.timesteps = forward.timesteps.flip(0)
    per_frame = embeds.repeat_interleave(x0.shape[2], dim=0)
    x = x0.clone()
    with torch.no_grad():
        for t in inverse.timesteps:
            x = inverse.step(module(x, t, encoder_hidden_states=per_frame).sample, t, x).prev_sample
    return x


def test_ddim_invert_matches_reference_loop(ad, cond) -> None:
    unet, _, _, scheduler = ad
    x0 = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    ours = ddim_invert(unet, scheduler, cond, Latents(x0), 10, guidance_scale=1.0)
    ref = _reference_inversion(unet.module, scheduler.config, cond.prompt_embeds, x0, 10)
    diff = (ours - ref).abs().max().item()
    print(f"AnimateDiff ddim_invert: max abs diff vs reference loop {diff:.3g}")
    assert diff <= 1e-4


def test_ddim_round_trip_exact_when_prediction_ignores_latents(ad, cond) -> None:
    unet, _, _, scheduler = ad
    module = copy.deepcopy(unet.module)
    with torch.no_grad():
        module.conv_in.weight.zero_()
    blind = UNet3D(module=module, source="test:blind-animatediff", vae_scale_factor=unet.vae_scale_factor)
    x0 = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(11))
    noise = ddim_invert(blind, scheduler, cond, x0, 10, guidance_scale=1.0)
    back = denoise(blind, scheduler, cond, steps=10, guidance_scale=1.0, noise=noise, scheduler_type="ddim")
    err = ((back - x0).norm() / x0.norm()).item()
    print(f"AnimateDiff round trip, conv_in zeroed, 10 steps: relative error {err:.3g}")
    assert err <= 1e-4
    assert ((noise - x0).norm() / x0.norm()).item() > 0.1  # the inversion did move the latents


# --------------------------------------------------------------------------- frame limit, context windows


def test_more_frames_than_the_motion_modules_take_is_refused_by_name(ad, cond) -> None:
    unet, _, _, scheduler = ad
    limit = unet.max_frames
    with pytest.raises(SamplingInputError, match="motion_max_seq_length") as info:
        denoise(unet, scheduler, cond, limit + 4, 16, 16, 2, GUIDANCE, 0)
    assert info.value.input == "frames"
    assert f"at most {limit}" in str(info.value)
    with pytest.raises(SamplingInputError) as info:
        denoise(unet, scheduler, cond, limit + 4, 16, 16, 2, GUIDANCE, 0, context_frames=limit + 1,
                context_overlap=2)
    assert info.value.input == "context_frames"
    with pytest.raises(SamplingInputError) as info:
        ddim_invert(unet, scheduler, cond, torch.zeros(1, 4, limit + 1, 4, 4), 2)
    assert info.value.input == "latents"
    with pytest.raises(SamplingInputError) as info:
        denoise(unet, scheduler, cond, latents=torch.zeros(1, 4, limit + 1, 4, 4), steps=2, strength=0.5)
    assert info.value.input == "latents"


def test_context_windows_run_a_clip_longer_than_the_motion_modules(ad, cond) -> None:
    unet, _, _, scheduler = ad
    frames = unet.max_frames + 4
    seen: list[int] = []
    hook = unet.module.register_forward_pre_hook(lambda module, args: seen.append(int(args[0].shape[2])))
    try:
        out = denoise(unet, scheduler, cond, frames, 16, 16, 2, GUIDANCE, 0, context_frames=8, context_overlap=2)
    finally:
        hook.remove()
    side = 16 // unet.vae_scale_factor
    assert out.shape == (1, 4, frames, side, side) and bool(torch.isfinite(out).all())
    assert set(seen) == {8}
    whole = denoise(unet, scheduler, cond, 8, 16, 16, 2, GUIDANCE, 0)
    one_window = denoise(unet, scheduler, cond, 8, 16, 16, 2, GUIDANCE, 0, context_frames=8)
    assert torch.equal(whole, one_window)

