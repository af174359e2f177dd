"""AnimateDiff text-to-video wall time: reelgraph's animatediff workflow vs diffusers' AnimateDiffPipeline.

Same ``builtin:tiny-animatediff`` folder, prompt, negative prompt, seed, size, frames, steps and guidance, both in
this process with the model already loaded, runs interleaved (A, B, A, B, ...) so machine noise hits both alike.
reelgraph runs on a fresh engine each time (nothing cached but the loaded model) and stops at ``decode.video``,
the same point the pipeline's ``output_type="pt"`` stops at. Prints the median ratio reelgraph/diffusers (goal:
<= 1.02) and checks that both produced the same frames.

Run: ``python bench/animatediff_vs_diffusers.py [--quick] [--repeats 7] [--steps 20] [--size 32] [--frames 16]
[--threads 1]``.
"""

from __future__ import annotations

import argparse
import statistics
import warnings

from common import ROOT, Row, interleaved, median_ratio, print_rows

WORKFLOW = ROOT / "workflows" / "animatediff.json"
SOURCE = "builtin:tiny-animatediff"


def run(quick: bool = False, steps: int = 20, size: int = 32, frames: int = 16, threads: int = 1,
        repeats: int | None = None) -> list[Row]:
    """Median wall-time ratio reelgraph / AnimateDiffPipeline, and the max frame difference."""
    import torch
    from diffusers import AnimateDiffPipeline

    from reelgraph import Engine
    from reelgraph.nodes.animatediff.tiny import ensure_tiny_animatediff
    from reelgraph.nodes.model_loading import load_model, quiet_hf_libraries

    repeats = repeats or (3 if quick else 7)
    torch.set_num_threads(threads)
    quiet_hf_libraries()
    folder = ensure_tiny_animatediff()  # the workflow's default model, loaded by both sides
    load_model(SOURCE, device="cpu")  # warm the process-wide model cache
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = AnimateDiffPipeline.from_pretrained(folder, torch_dtype=torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    params = {"model": SOURCE, "prompt": "a red ball bouncing on a green field", "negative_prompt": "blurry",
              "seed": 7, "frames": frames, "height": size, "width": size, "steps": steps, "guidance_scale": 7.5}

    def ours() -> torch.Tensor:
        engine = Engine(entry_points=False, env=False)
        return engine.run(WORKFLOW, params, outputs=["decode.video"]).outputs["decode.video"].frames

    def theirs() -> torch.Tensor:
        return pipe(params["prompt"], negative_prompt=params["negative_prompt"], num_frames=frames, height=size,
                    width=size, num_inference_steps=steps, guidance_scale=7.5,
                    generator=torch.Generator("cpu").manual_seed(7), output_type="pt").frames[0]

    max_diff = (ours() - theirs()).abs().max().item()  # also the warm-up
    ta, tb = interleaved(ours, theirs, repeats)
    ratio = median_ratio(ta, tb)
    return [Row("AnimateDiff t2v vs diffusers", f"reelgraph animatediff.json / AnimateDiffPipeline, {SOURCE}, "
                f"{frames}x{size}x{size}, {steps} steps, {threads} thread(s), {repeats} pairs (median "
                f"{statistics.median(ta):.2f} s vs {statistics.median(tb):.2f} s); max frame diff {max_diff:.1e}",
                f"{ratio:.3f}", "<= 1.02", ratio <= 1.02)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    print_rows(run(args.quick, args.steps, args.size, args.frames, args.threads, args.repeats))
