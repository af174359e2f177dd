"""Cost of ControlNet and LoRA on the UNet3D: a controlled denoising step relative to a plain one, and the
cost of applying and removing a LoRA.

ControlNet: ``sampling.denoise`` with guidance (so every step runs the UNet3D, and the ControlNet, on both
halves) without control, with one control and with two, on ``builtin:tiny`` and its tiny ControlNet; runs
interleaved so machine noise hits all alike; per-step medians and ratios to the plain step.

LoRA: ``load_lora`` (read, key mapping, merge into a patched copy) with ``builtin:tiny-lora``, the merge
alone, removal (dropping the patched copy; the base model is never changed, so there is nothing to undo),
and a denoising step with the patched model vs the base (merged weights: no per-step overhead). With
``--big`` the LoRA timings are repeated on a larger random UNet3D (``(64, 128, 256, 256)`` channels) with a
rank-16 LoRA on every attention projection, to show how applying scales with model size.

Run: ``python bench/controlnet_lora.py [--repeats 7] [--steps 4] [--size 64] [--frames 8] [--threads 1] [--big]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import weakref
from collections.abc import Callable
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median wall time of each function, running them in turn (A, B, C, A, B, C, ...)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def bench_controlnet(args: argparse.Namespace) -> None:
    """Per-step cost of denoising with 0, 1 and 2 ControlNets."""
    import torch

    from reelgraph.nodes import sampling
    from reelgraph.nodes.controlnet import load_controlnet
    from reelgraph.nodes.model_loading import load_model
    from reelgraph.nodes.values import Control

    unet, _, text_encoder, scheduler = load_model("builtin:tiny", device="cpu")
    controlnet = load_controlnet("builtin:tiny", device="cpu")
    cond = sampling.encode_prompt(text_encoder, "a red circle moving left", "blurry", guidance=True)
    frames = torch.rand(args.frames, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    one = cond.with_control(Control(controlnet, frames))
    two = one.with_control(Control(controlnet, frames.flip(-1), scale=0.5))
    run = {"frames": args.frames, "height": args.size, "width": args.size, "steps": args.steps, "seed": 1,
           "guidance_scale": 7.5}
    medians = interleaved({
        "plain": lambda: sampling.denoise(unet, scheduler, cond, **run),
        "1 controlnet": lambda: sampling.denoise(unet, scheduler, one, **run),
        "2 controlnets": lambda: sampling.denoise(unet, scheduler, two, **run),
    }, args.repeats)
    plain = medians["plain"] / args.steps
    print(f"ControlNet, builtin:tiny, {args.frames} frames of {args.size}x{args.size}, guidance on, "
          f"{args.threads} thread(s):")
    for name, total in medians.items():
        step = total / args.steps
        print(f"  {name:14s} {step * 1000:8.1f} ms/step   x{step / plain:.2f} of a plain step")


def _big_unet_and_lora(rank: int = 16) -> tuple[Any, Any, float]:
    """A larger random UNet3D and a LoRA on every attention projection (parsed, resolved targets)."""
    import torch
    from diffusers import UNet3DConditionModel

    from reelgraph.nodes.lora import LoraWeights

    unet = UNet3DConditionModel(block_out_channels=(64, 128, 256, 256), layers_per_block=2, cross_attention_dim=64,
                                attention_head_dim=8, norm_num_groups=32).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    targets = {}
    for name, module in unet.named_modules():
        if name.endswith(("to_q", "to_k", "to_v", "to_out.0")):
            out_f, in_f = module.weight.shape
            targets[name] = LoraWeights(down=torch.randn(rank, in_f, generator=g) * 0.01,
                                        up=torch.randn(out_f, rank, generator=g) * 0.01, alpha=float(rank))
    params = sum(p.numel() for p in unet.parameters())
    return unet, targets, params / 1e6


def bench_lora(args: argparse.Namespace) -> None:
    """Cost of applying (file to patched copy, and merge only) and removing a LoRA, and of a step with it."""
    from reelgraph.nodes import sampling
    from reelgraph.nodes.lora import merge_lora, read_lora, resolve_lora
    from reelgraph.nodes.lora_nodes import load_lora
    from reelgraph.nodes.model_loading import load_model
    from reelgraph.nodes.tiny_models import ensure_tiny_lora

    unet, _, text_encoder, scheduler = load_model("builtin:tiny", device="cpu")
    path = ensure_tiny_lora()
    lora = read_lora(path)
    targets = resolve_lora(lora.layers["unet"], unet.module, "unet", lora.kohya_keys)
    apply_file = median_time(lambda: load_lora(unet, text_encoder, "builtin:tiny-lora"), args.repeats)
    merge_only = median_time(lambda: merge_lora(unet.module, targets, 1.0), args.repeats)

    removals: list[float] = []
    freed = True
    for _ in range(args.repeats):
        patched = load_lora(unet, text_encoder, "builtin:tiny-lora")
        merged = weakref.ref(patched.unet.module.transformer_in)  # a module copy only the patched model holds
        start = time.perf_counter()
        del patched
        removals.append(time.perf_counter() - start)
        freed = freed and merged() is None  # freed by reference counting, no garbage collection needed
    patched = load_lora(unet, text_encoder, "builtin:tiny-lora")
    cond = sampling.encode_prompt(text_encoder, "a red circle moving left", "blurry", guidance=True)
    run = {"frames": args.frames, "height": args.size, "width": args.size, "steps": args.steps, "seed": 1,
           "guidance_scale": 7.5}
    steps = interleaved({"base": lambda: sampling.denoise(unet, scheduler, cond, **run),
                         "lora": lambda: sampling.denoise(patched.unet, scheduler, cond, **run)}, args.repeats)
    print(f"LoRA, builtin:tiny-lora ({len(lora)} layers, {len(targets)} on the UNet3D), builtin:tiny:")
    print(f"  apply (read file, map keys, merge UNet3D + text encoder): {apply_file * 1000:7.2f} ms")
    print(f"  apply (merge UNet3D only):                                 {merge_only * 1000:7.2f} ms")
    print(f"  remove (drop the patched copy; base never changed):        {statistics.median(removals) * 1000:7.2f} ms"
          f" (memory freed at once: {freed})")
    print(f"  denoising step with the LoRA vs base: x{steps['lora'] / steps['base']:.3f}")
    if args.big:
        big, big_targets, mparams = _big_unet_and_lora()
        merge_big = median_time(lambda: merge_lora(big, big_targets, 1.0), args.repeats)
        print(f"LoRA, random UNet3D of {mparams:.1f} M params, rank 16 on {len(big_targets)} attention projections:")
        print(f"  apply (merge only): {merge_big * 1000:.1f} ms")


def run(quick: bool = False) -> list[Any]:
    """For ``bench/run_all.py``: both benchmarks with default sizes, their printed lines as result rows."""
    import contextlib
    import io

    import torch
    from common import Row

    from reelgraph.nodes.model_loading import quiet_hf_libraries

    args = argparse.Namespace(repeats=3 if quick else 7, steps=4, size=64, frames=8, threads=1, big=False)
    torch.set_num_threads(1)
    quiet_hf_libraries()
    rows = []
    for name, fn in (("ControlNet step cost", bench_controlnet), ("LoRA apply/remove", bench_lora)):
        out = io.StringIO()
        with torch.no_grad(), contextlib.redirect_stdout(out):
            fn(args)
        lines = [" ".join(x.split()) for x in out.getvalue().splitlines() if x.strip()]
        rows.append(Row(name, lines[0].rstrip(":"), "; ".join(lines[1:]), "reported", None))
    return rows


def main() -> None:
    """Parse arguments and run both benchmarks."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--big", action="store_true", help="also time applying a LoRA to a larger UNet3D")
    args = parser.parse_args()

    import torch

    from reelgraph.nodes.model_loading import quiet_hf_libraries

    torch.set_num_threads(args.threads)
    quiet_hf_libraries()
    with torch.no_grad():
        bench_controlnet(args)
        bench_lora(args)


if __name__ == "__main__":
    main()
