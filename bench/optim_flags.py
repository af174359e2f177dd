"""What each optional speed-up buys on this machine: inference_mode, channels_last, torch.compile.

One UNet3D denoising step of ``builtin:tiny`` (classifier-free guidance batched: batch 2, 8 frames of 64x64,
so 16x16 latents), timed interleaved against the default path (``torch.no_grad``, contiguous weights, eager)
in one process. Each variant reports its median time ratio to the default (< 1 is faster) and its largest
output difference from the default, so a flag that changes results says so.

- ``inference_mode``: ``torch.inference_mode()`` instead of ``torch.no_grad()`` around the call.
- ``channels_last``: ``load_model(memory_format="channels_last")``.
- ``compile``: ``load_model(compile=True)`` (``torch.compile`` of the UNet3D); the first call compiles,
  which takes minutes on this CPU, so it runs only with ``--compile`` (and not in ``run_all``'s suite).

Run: ``python bench/optim_flags.py [--quick] [--compile] [--threads 1] [--size 64]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from common import Row, interleaved, median_ratio, print_rows


def run(quick: bool = False, compile_unet: bool = False, threads: int = 1, size: int = 64,
        frames: int = 8, repeats: int | None = None) -> list[Row]:
    """Rows: each variant's median step-time ratio to the default path and its max output difference."""
    import torch

    from reelgraph.nodes.model_loading import clear_model_cache, load_model, quiet_hf_libraries

    repeats = repeats or (7 if quick else 25)
    torch.set_num_threads(threads)
    quiet_hf_libraries()
    base = load_model("builtin:tiny", device="cpu")[0].module
    gen = torch.Generator("cpu").manual_seed(0)
    x = torch.randn((2, 4, frames, size // 4, size // 4), generator=gen)
    emb = torch.randn((2, 77, base.config.cross_attention_dim), generator=gen)
    t = torch.tensor(500)

    def step(module: torch.nn.Module, mode: Callable[[], object] = torch.no_grad) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            with mode():
                return module(x, t, encoder_hidden_states=emb).sample
        return call

    default = step(base)
    reference = default()
    where = f"builtin:tiny UNet3D step, CFG batch 2, {frames}x{size}x{size}, {threads} thread(s), {repeats} pairs"
    rows = []

    def compare(name: str, variant: Callable[[], torch.Tensor], note: str = "") -> None:
        diff = (variant() - reference).abs().max().item()
        ta, tb = interleaved(variant, default, repeats)
        ratio = median_ratio(ta, tb)
        rows.append(Row(f"flag: {name}", f"{where} (median {statistics.median(ta) * 1e3:.1f} ms vs "
                        f"{statistics.median(tb) * 1e3:.1f} ms); max output diff {diff:.1e}{note}",
                        f"{ratio:.3f}x time", "reported (< 1 is faster)", None))

    compare("inference_mode", step(base, torch.inference_mode))
    clear_model_cache()
    channels_last = load_model("builtin:tiny", device="cpu", memory_format="channels_last")[0].module
    compare("channels_last", step(channels_last))
    if compile_unet:
        clear_model_cache()
        compiled = load_model("builtin:tiny", device="cpu", compile=True)[0].module
        call = step(compiled)
        t0 = time.perf_counter()
        call()
        first = time.perf_counter() - t0
        compare("torch.compile", call, f"; first call (compiling) {first:.0f} s")
    clear_model_cache()
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (minutes to compile)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    print_rows(run(args.quick, args.compile, args.threads, args.size, args.frames, args.repeats))
