"""Text-to-video wall time: reelgraph's text2video workflow vs diffusers' TextToVideoSDPipeline.

Same builtin:tiny folder, prompt, seed, size, frames, steps and guidance, both in this process with the
model already loaded, runs interleaved (A, B, A, B, ...) so machine noise hits both alike. reelgraph
runs on a fresh engine each time (nothing cached but the loaded model) and stops at ``decode.video``, the
same point the pipeline's ``output_type="pt"`` stops at. Prints the median ratio reelgraph/diffusers
(goal: <= 1.02) and checks that both produced the same frames.

Run: ``python bench/t2v_vs_diffusers.py [--quick] [--repeats 7] [--steps 20] [--size 64] [--frames 8] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import statistics
import warnings

from common import ROOT, Row, interleaved, median_ratio, print_rows

WORKFLOW = ROOT / "workflows" / "text2video.json"


def run(quick: bool = False, steps: int = 20, size: int = 64, frames: int = 8, threads: int = 1,
        repeats: int | None = None) -> list[Row]:
    """Median wall-time ratio reelgraph / TextToVideoSDPipeline, and the max frame difference."""
    import torch
    from diffusers import TextToVideoSDPipeline

    from reelgraph import Engine
    from reelgraph.nodes.model_loading import load_model, quiet_hf_libraries
    from reelgraph.nodes.tiny_models import TINY_SOURCE, builtin_model

    repeats = repeats or (3 if quick else 7)
    torch.set_num_threads(threads)
    quiet_hf_libraries()
    folder = builtin_model(TINY_SOURCE)  # the workflow's default model, loaded by both sides
    load_model("builtin:tiny", device="cpu")  # warm the process-wide model cache
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = TextToVideoSDPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    params = {"prompt": "a red circle moving left", "negative_prompt": "low quality, blurry", "seed": 7,
              "frames": frames, "height": size, "width": size, "steps": steps, "guidance_scale": 9.0}

    def ours() -> torch.Tensor:
        engine = Engine(entry_points=False, env=False)
        return engine.run(WORKFLOW, params, outputs=["decode.video"]).outputs["decode.video"].frames

    def theirs() -> torch.Tensor:
        return pipe(params["prompt"], negative_prompt=params["negative_prompt"], num_frames=frames,
                    height=size, width=size, num_inference_steps=steps, guidance_scale=9.0,
                    generator=torch.Generator("cpu").manual_seed(7), output_type="pt").frames[0]

    max_diff = (ours() - theirs()).abs().max().item()  # also the warm-up
    ta, tb = interleaved(ours, theirs, repeats)
    ratio = median_ratio(ta, tb)
    return [Row("t2v vs diffusers", f"reelgraph / TextToVideoSDPipeline, {frames}x{size}x{size}, {steps} steps, "
                f"{threads} thread(s), {repeats} pairs (median {statistics.median(ta):.2f} s vs "
                f"{statistics.median(tb):.2f} s); max frame diff {max_diff:.1e}", f"{ratio:.3f}", "<= 1.02",
                ratio <= 1.02)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    print_rows(run(args.quick, args.steps, args.size, args.frames, args.threads, args.repeats))
