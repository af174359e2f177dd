"""Sampling building blocks against the diffusers text-to-video pipelines and reference loops."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest

from reelgraph.nodes.sampling import ddim_invert, denoise, encode_prompt, vae_decode, vae_encode
from reelgraph.nodes.values import Conditioning, Latents, UNet3D, Video

torch = pytest.importorskip("torch")
for _name in ("diffusers", "transformers", "safetensors"):
    pytest.importorskip(_name)

PROMPT = "a red ball bouncing on a green field"
NEGATIVE = "blurry, low quality"
FRAMES, HEIGHT, WIDTH, STEPS, GUIDANCE = 8, 32, 32, 10, 7.5


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def t2v_pipe(tiny_dir: Path):
    """The reference pipeline, loaded by diffusers itself from the builtin folder."""
    from diffusers import TextToVideoSDPipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _quiet(TextToVideoSDPipeline.from_pretrained(tiny_dir))


@pytest.fixture(scope="module")
def v2v_pipe(t2v_pipe):
    """``VideoToVideoSDPipeline`` sharing the reference pipeline's modules."""
    from diffusers import VideoToVideoSDPipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _quiet(VideoToVideoSDPipeline(**t2v_pipe.components))


@pytest.fixture(scope="module")
def cond(tiny) -> Conditioning:
    _, _, text_encoder, _ = tiny
    return encode_prompt(text_encoder, PROMPT, NEGATIVE, GUIDANCE)


def _scheduler_like(pipe, kind: str | None, config: dict):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    cls = {None: DDIMScheduler, "ddim": DDIMScheduler, "dpm++": DPMSolverMultistepScheduler,
           "euler": EulerDiscreteScheduler}[kind]
    pipe.scheduler = cls.from_config(config)


def test_encode_prompt_matches_pipeline(tiny, t2v_pipe, cond) -> None:
    ref_pos, ref_neg = t2v_pipe.encode_prompt(PROMPT, "cpu", 1, True, NEGATIVE)
    assert torch.equal(cond.prompt_embeds, ref_pos)
    assert torch.equal(cond.negative_embeds, ref_neg)
    no_cfg = encode_prompt(tiny[2], PROMPT, NEGATIVE, 1.0)
    assert no_cfg.negative_embeds is None
    assert torch.equal(no_cfg.prompt_embeds, ref_pos)
    empty_neg = encode_prompt(tiny[2], PROMPT, None, True).negative_embeds
    assert torch.equal(empty_neg, t2v_pipe.encode_prompt(PROMPT, "cpu", 1, True, None)[1])


@pytest.mark.parametrize(("kind", "eta"), [(None, 0.0), (None, 0.8), ("dpm++", 0.0), ("euler", 0.0)])
def test_t2v_matches_pipeline(tiny, t2v_pipe, cond, kind: str | None, eta: float) -> None:
    unet, vae, _, scheduler = tiny
    _scheduler_like(t2v_pipe, kind, scheduler.config)
    ref = t2v_pipe(
        PROMPT, negative_prompt=NEGATIVE, num_frames=FRAMES, height=HEIGHT, width=WIDTH,
        num_inference_steps=STEPS, guidance_scale=GUIDANCE, eta=eta,
        generator=torch.Generator("cpu").manual_seed(1234), output_type="pt",
    ).frames[0]
    latents = denoise(unet, scheduler, cond, FRAMES, HEIGHT, WIDTH, STEPS, GUIDANCE, 1234, eta=eta,
                      scheduler_type=kind)
    assert latents.shape == (1, 4, FRAMES, HEIGHT // 4, WIDTH // 4)
    video = vae_decode(vae, latents, chunk_frames=3)
    diff = (video.frames - ref).abs().max().item()
    print(f"t2v scheduler={kind or 'model(ddim)'} eta={eta}: max abs diff {diff:.3g}")
    assert diff <= 1e-4


@pytest.mark.parametrize("kind", [None, "euler"])
def test_v2v_matches_pipeline_from_latents(tiny, v2v_pipe, cond, kind: str | None) -> None:
    unet, vae, _, scheduler = tiny
    _scheduler_like(v2v_pipe, kind, scheduler.config)
    source = Video(torch.rand(FRAMES, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(7)))
    latents = vae_encode(vae, source, chunk_frames=3)
    # Handed 4-channel latents [B, F, C, h, w], the pipeline skips its VAE and draws only the noise.
    ref = v2v_pipe(
        PROMPT, video=latents.tensor.permute(0, 2, 1, 3, 4), negative_prompt=NEGATIVE, strength=0.6,
        num_inference_steps=STEPS, guidance_scale=GUIDANCE,
        generator=torch.Generator("cpu").manual_seed(99), output_type="pt",
    ).frames[0]
    out = denoise(unet, scheduler, cond, latents=latents, steps=STEPS, guidance_scale=GUIDANCE, seed=99,
                  strength=0.6, scheduler_type=kind)
    diff = (vae_decode(vae, out).frames - ref).abs().max().item()
    print(f"v2v (latents) scheduler={kind or 'model(ddim)'} strength=0.6: max abs diff {diff:.3g}")
    assert diff <= 1e-4


def test_v2v_matches_pipeline_from_pixels(tiny, v2v_pipe, cond) -> None:
    """The pixel path: the pipeline samples the VAE posterior, then draws noise, from one generator."""
    unet, vae, _, scheduler = tiny
    _scheduler_like(v2v_pipe, None, scheduler.config)
    pixels = torch.rand(FRAMES, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(8))
    ref = v2v_pipe(
        PROMPT, video=pixels[None], negative_prompt=NEGATIVE, strength=0.6, num_inference_steps=STEPS,
        guidance_scale=GUIDANCE, generator=torch.Generator("cpu").manual_seed(5), output_type="pt",
    ).frames[0]
    gen = torch.Generator("cpu").manual_seed(5)
    latents = vae_encode(vae, Video(pixels), chunk_frames=FRAMES, generator=gen)
    noise = torch.randn((FRAMES, 4, HEIGHT // 4, WIDTH // 4), generator=gen)
    noise = noise.reshape(1, FRAMES, 4, HEIGHT // 4, WIDTH // 4).permute(0, 2, 1, 3, 4)
    out = denoise(unet, scheduler, cond, latents=latents, steps=STEPS, guidance_scale=GUIDANCE, seed=5,
                  strength=0.6, noise=noise)
    diff = (vae_decode(vae, out).frames - ref).abs().max().item()
    print(f"v2v (pixels) strength=0.6: max abs diff {diff:.3g}")
    assert diff <= 1e-4


def test_denoise_is_deterministic(tiny, cond) -> None:
    unet, _, _, scheduler = tiny
    args = (unet, scheduler, cond, 4, 16, 16, 4, GUIDANCE)
    a = denoise(*args, 42, eta=0.5)
    b = denoise(*args, 42, eta=0.5)
    c = denoise(*args, 43, eta=0.5)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_progress_reports_and_interrupts(tiny, cond) -> None:
    unet, _, _, scheduler = tiny
    calls: list[tuple[int, int]] = []
    denoise(unet, scheduler, cond, 2, 16, 16, 5, GUIDANCE, 0, progress=lambda i, n: calls.append((i, n)))
    assert calls == [(i, 5) for i in range(1, 6)]

    class Stop(Exception):
        pass

    def stop_at_two(i: int, n: int) -> None:
        if i == 2:
            raise Stop

    with pytest.raises(Stop):
        denoise(unet, scheduler, cond, 2, 16, 16, 5, GUIDANCE, 0, progress=stop_at_two)
    seen: list[tuple[int, int]] = []
    lat = torch.zeros(1, 4, 2, 4, 4)
    denoise(unet, scheduler, cond, latents=lat, steps=10, guidance_scale=GUIDANCE, strength=0.3,
            progress=lambda i, n: seen.append((i, n)))
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_denoise_argument_errors(tiny, cond) -> None:
    unet, _, text_encoder, scheduler = tiny
    with pytest.raises(ValueError, match="multiples of the VAE factor"):
        denoise(unet, scheduler, cond, 2, 30, 32, 2, GUIDANCE, 0)
    with pytest.raises(ValueError, match="negative embeddings"):
        denoise(unet, scheduler, encode_prompt(text_encoder, PROMPT, None, 1.0), 2, 16, 16, 2, GUIDANCE, 0)
    with pytest.raises(ValueError, match="scheduler_type"):
        denoise(unet, scheduler, cond, 2, 16, 16, 2, GUIDANCE, 0, scheduler_type="heun")
    with pytest.raises(ValueError, match="strength"):
        denoise(unet, scheduler, cond, 2, 16, 16, 2, GUIDANCE, 0, strength=0.5)
    with pytest.raises(ValueError, match="does not match"):
        denoise(unet, scheduler, cond, 3, 16, 16, 2, GUIDANCE, 0, latents=torch.zeros(1, 4, 2, 4, 4))


def _reference_inversion(unet_module, config: dict, cond: Conditioning, x0: torch.Tensor, steps: int,
                         guidance: float) -> torch.Tensor:
    """A Tune-A-Video style loop on ``DDIMInverseScheduler`` (written here, independent of the product)."""
    from diffusers import DDIMInverseScheduler

    inverse = DDIMInverseScheduler.from_config(config)
    inverse.set_timesteps(steps)
    x = x0.clone()
    with torch.no_grad():
        for t in inverse.timesteps:
            if guidance > 1:
                both = unet_module(torch.cat([x, x]), t,
                                   encoder_hidden_states=torch.cat([cond.negative_embeds, cond.prompt_embeds])).sample
                uncond, text = both.chunk(2)
                eps = uncond + guidance * (text - uncond)
            else:
                eps = unet_module(x, t, encoder_hidden_states=cond.prompt_embeds).sample
            x = inverse.step(eps, t, x).prev_sample
    return x


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_ddim_invert_matches_reference_loop(tiny, cond, guidance: float) -> None:
    unet, _, _, scheduler = tiny
    x0 = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    ours = ddim_invert(unet, scheduler, cond, Latents(x0), 10, guidance_scale=guidance)
    ref = _reference_inversion(unet.module, scheduler.config, cond, x0, 10, guidance)
    diff = (ours - ref).abs().max().item()
    print(f"ddim_invert guidance={guidance}: max abs diff vs reference loop {diff:.3g}")
    assert diff <= 1e-4


def _round_trip_error(unet: UNet3D, scheduler, cond: Conditioning, x0: torch.Tensor, steps: int) -> float:
    noise = ddim_invert(unet, scheduler, cond, x0, steps, guidance_scale=1.0)
    back = denoise(unet, scheduler, cond, steps=steps, guidance_scale=1.0, noise=noise, scheduler_type="ddim")
    return ((back - x0).norm() / x0.norm()).item()


def test_ddim_round_trip_exact_when_prediction_ignores_latents(tiny, cond) -> None:
    unet, _, _, scheduler = tiny
    module = copy.deepcopy(unet.module)
    with torch.no_grad():
        module.conv_in.weight.zero_()
    blind = UNet3D(module=module, source="test:blind", vae_scale_factor=unet.vae_scale_factor)
    x0 = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(11))
    err = _round_trip_error(blind, scheduler, cond, x0, 10)
    print(f"round trip, conv_in zeroed, 10 steps: relative error {err:.3g}")
    assert err <= 1e-4


def test_ddim_round_trip_on_random_weights_report(tiny, cond) -> None:
    """Not an accuracy claim: random weights make inversion far from exact; this prints how far."""
    unet, _, _, scheduler = tiny
    x0 = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(11))
    for steps in (10, 25, 50):
        err = _round_trip_error(unet, scheduler, cond, x0, steps)
        print(f"round trip, random tiny weights, {steps} steps: relative error {err:.4g}")
        assert err == err  # finite, not NaN
