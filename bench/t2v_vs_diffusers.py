"""Text-to-video wall time: reelgraph's text2video workflow vs diffusers' TextToVideoSDPipeline.

Same builtin:tiny folder, prompt, seed, size, frames, steps and guidance, both in this process with the
model already loaded, runs interleaved (A, B, A, B, ...) so machine noise hits both alike. reelgraph
runs on a fresh engine each time (nothing cached but the loaded model) and stops at ``decode.video``, the
same point the pipeline's ``output_type="pt"`` stops at. Prints the median ratio reelgraph/diffusers
(goal: <= 1.02) and checks that both produced the same frames.

Run: ``python bench/t2v_vs_diffusers.py [--repeats 7] [--steps 20] [--size 64] [--frames 8] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORKFLOW = Path(__file__).resolve().parents[1] / "workflows" / "text2video.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch
    from diffusers import TextToVideoSDPipeline

    from reelgraph import Engine
    from reelgraph.nodes.model_loading import load_model, quiet_hf_libraries
    from reelgraph.nodes.tiny_models import ensure_tiny_model

    torch.set_num_threads(args.threads)
    quiet_hf_libraries()
    folder = ensure_tiny_model()
    load_model("builtin:tiny", device="cpu")  # warm the process-wide model cache
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = TextToVideoSDPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    params = {"prompt": "a red circle moving left", "negative_prompt": "low quality, blurry", "seed": 7,
              "frames": args.frames, "height": args.size, "width": args.size, "steps": args.steps,
              "guidance_scale": 9.0}

    def ours() -> torch.Tensor:
        engine = Engine(entry_points=False, env=False)
        return engine.run(WORKFLOW, params, outputs=["decode.video"]).outputs["decode.video"].frames

    def theirs() -> torch.Tensor:
        return pipe(params["prompt"], negative_prompt=params["negative_prompt"], num_frames=args.frames,
                    height=args.size, width=args.size, num_inference_steps=args.steps, guidance_scale=9.0,
                    generator=torch.Generator("cpu").manual_seed(7), output_type="pt").frames[0]

    a, b = ours(), theirs()  # warm-up, and the equality check
    max_diff = (a - b).abs().max().item()
    ratios, ours_s, theirs_s = [], [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ours()
        t1 = time.perf_counter()
        theirs()
        t2 = time.perf_counter()
        ours_s.append(t1 - t0)
        theirs_s.append(t2 - t1)
        ratios.append((t1 - t0) / (t2 - t1))
    print(f"t2v {args.frames}x{args.size}x{args.size}, {args.steps} steps, {args.threads} thread(s), "
          f"{args.repeats} interleaved pairs; max |reelgraph - diffusers| = {max_diff:.2e}")
    print(f"median wall: reelgraph {statistics.median(ours_s):.3f} s, diffusers {statistics.median(theirs_s):.3f} s")
    print(f"ratio reelgraph/diffusers: median {statistics.median(ratios):.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f}); goal <= 1.02")


if __name__ == "__main__":
    main()
