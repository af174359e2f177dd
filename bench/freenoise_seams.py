"""Seams of context-window sampling, with and without FreeNoise-style noise re-use across windows.

A clip longer than the UNet's window is denoised on overlapping context windows (``unet3d_denoise``'s
``context_frames``). Where one window's frames hand over to the next, the video may jump: a seam. FreeNoise
(Qiu et al., 2023, "noise rescheduling") starts every window from the same noise frames, shuffled in blocks of
the window stride, instead of fresh noise, so neighbouring windows denoise towards similar content.

This measures whether that helps here, before it becomes a node input: the seam size is the mean absolute
difference between consecutive decoded frames at the frame pairs where the set of windows changes (a window
starts or ends) divided by the same at every other frame pair (1.0 = no seam). Same model, prompts, seeds and
windows with independent noise (``unet3d_denoise`` as shipped) and with FreeNoise noise, plus the whole clip in
one UNet call as a reference where the model takes it.

Run: ``python bench/freenoise_seams.py [--quick] [--seeds 8] [--frames 24] [--context 8] [--overlap 4]
[--models tiny animatediff]``.
"""

from __future__ import annotations

import argparse
import statistics

from common import Row, print_rows

PROMPTS = ("a red circle moving left", "a blue square moving right", "a green triangle moving up",
           "a yellow circle moving down")


def freenoise_noise(shape: tuple[int, ...], generator, context: int, stride: int):
    """FreeNoise's rescheduled noise ``[B, C, F, h, w]``: fresh noise for the first ``context`` frames, then each
    block of ``stride`` frames is the block ``context`` frames earlier, with its frames shuffled."""
    import torch

    noise = torch.randn(shape, generator=generator)
    frames = shape[2]
    for start in range(context, frames, stride):
        block = min(stride, frames - start)
        source = start - context
        order = torch.randperm(block, generator=generator) + source
        noise[:, :, start:start + block] = noise[:, :, order]
    return noise


def seam_ratio(frames, windows: list[tuple[int, int]]) -> tuple[float, float, float]:
    """(boundary step, within step, ratio): mean |frame f+1 - frame f| where the covering windows change, elsewhere."""
    covering = [frozenset(i for i, (a, b) in enumerate(windows) if a <= f < b) for f in range(frames.shape[0])]
    steps = (frames[1:] - frames[:-1]).abs().mean(dim=(1, 2, 3))
    boundary = [float(s) for f, s in enumerate(steps) if covering[f] != covering[f + 1]]
    within = [float(s) for f, s in enumerate(steps) if covering[f] == covering[f + 1]]
    b, w = statistics.mean(boundary), statistics.mean(within)
    return b, w, b / w


def measure(handles, label: str, seeds: int, frames: int, context: int, overlap: int, steps: int, size: int,
            whole: bool) -> list[Row]:
    """Seam ratios for one model: windows with fresh noise, with FreeNoise noise, and (``whole``) no windows."""
    import torch

    from reelgraph.nodes.context_windows import context_windows
    from reelgraph.nodes.sampling import denoise, encode_prompt, vae_decode

    unet, vae, text, scheduler = handles
    windows = context_windows(frames, context, overlap)
    stride = context - overlap
    factor = unet.vae_scale_factor
    shape = (1, int(unet.module.config.in_channels), frames, size // factor, size // factor)
    results: dict[str, list[float]] = {"windows": [], "windows + FreeNoise": [], "whole clip": []}
    for seed in range(seeds):
        cond = encode_prompt(text, PROMPTS[seed % len(PROMPTS)], "", guidance=5.0)
        fresh = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
        rescheduled = freenoise_noise(shape, torch.Generator().manual_seed(seed), context, stride)
        runs = {"windows": (fresh, context), "windows + FreeNoise": (rescheduled, context)}
        if whole:
            runs["whole clip"] = (fresh, None)
        for name, (noise, window) in runs.items():
            latents = denoise(unet, scheduler, cond, steps=steps, guidance_scale=5.0, seed=seed, noise=noise,
                              context_frames=window, context_overlap=overlap)
            results[name].append(seam_ratio(vae_decode(vae, latents).frames, windows)[2])
    rows = []
    for name, ratios in results.items():
        if not ratios:
            continue
        mean = statistics.mean(ratios)
        spread = statistics.stdev(ratios) if len(ratios) > 1 else 0.0
        rows.append(Row(f"seams: {label}", f"{name}: boundary / within-window frame step, {frames} frames, windows "
                        f"of {context} overlapping {overlap}, {steps} steps, {size}x{size}, {seeds} seeds "
                        f"(sd {spread:.3f}; per seed {', '.join(f'{r:.2f}' for r in ratios)})", f"{mean:.3f}",
                        "reported (1.0 = no seam)", None))
    return rows


def run(quick: bool = False, seeds: int | None = None, frames: int = 24, context: int = 8, overlap: int = 4,
        steps: int = 20, size: int = 32, models: tuple[str, ...] = ("tiny", "animatediff")) -> list[Row]:
    """Seam ratios on the trained ``builtin:tiny`` (ModelScope family) and the tiny AnimateDiff model."""
    import torch

    from reelgraph.nodes.model_loading import load_model, quiet_hf_libraries

    torch.set_num_threads(1)
    quiet_hf_libraries()
    seeds = seeds or (2 if quick else 8)
    rows = []
    if "tiny" in models:
        rows += measure(load_model("builtin:tiny", device="cpu"), "builtin:tiny (trained)", seeds, frames, context,
                        overlap, steps, size, whole=True)
    if "animatediff" in models:
        animatediff = load_model("builtin:tiny-animatediff", device="cpu")
        rows += measure(animatediff, "builtin:tiny-animatediff (random)", seeds, frames, context, overlap, steps,
                        size, whole=frames <= (animatediff[0].max_frames or frames))
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--context", type=int, default=8)
    parser.add_argument("--overlap", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--models", nargs="+", choices=("tiny", "animatediff"), default=("tiny", "animatediff"))
    args = parser.parse_args()
    print_rows(run(args.quick, args.seeds, args.frames, args.context, args.overlap, args.steps, args.size,
                   tuple(args.models)))
