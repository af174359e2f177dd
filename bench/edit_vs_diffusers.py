"""Edit workflow vs a hand-written diffusers script doing the same DDIM inversion + regeneration.

The script uses diffusers directly: ``vae.encode`` (posterior mean), ``DDIMInverseScheduler`` driving the
UNet3D over the source caption, then ``TextToVideoSDPipeline(latents=inverted)`` under the edited prompt.
reelgraph runs ``workflows/edit_video.json`` up to ``decode.video`` on a fresh engine each time (model
already loaded in both). Runs are interleaved; the frames are checked equal. Goal: ratio <= 1.02.
"""

from __future__ import annotations

import argparse
import json
import warnings

from common import ROOT, Row, interleaved, median_ratio, print_rows

WORKFLOW = ROOT / "workflows" / "edit_video.json"


def run(quick: bool = False, steps: int = 20, repeats: int | None = None, threads: int = 1) -> list[Row]:
    """Median time ratio reelgraph / hand-written script."""
    import torch
    from diffusers import DDIMInverseScheduler, DDIMScheduler, TextToVideoSDPipeline

    from reelgraph import Engine
    from reelgraph.nodes.model_loading import load_model, quiet_hf_libraries
    from reelgraph.nodes.tiny_models import TINY_SOURCE, builtin_model
    from reelgraph.nodes.video_io import read_video

    torch.set_num_threads(threads)
    repeats = repeats or (3 if quick else 7)
    quiet_hf_libraries()
    folder = builtin_model(TINY_SOURCE)  # the workflow's default model, loaded by both sides
    load_model("builtin:tiny", device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = TextToVideoSDPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    params = {"steps": steps}
    defaults = {k: v["default"] for k, v in json.loads(WORKFLOW.read_text())["params"].items()}
    source, edited = defaults["source_caption"], defaults["prompt"]
    guidance, seed = defaults["guidance_scale"], defaults["seed"]

    def ours() -> torch.Tensor:
        result = Engine(entry_points=False, env=False).run(WORKFLOW, params, outputs=["decode.video"])
        return result.outputs["decode.video"].frames

    @torch.no_grad()
    def script() -> torch.Tensor:
        video = read_video(WORKFLOW.parent / defaults["source"], max_frames=defaults["frames"])
        pixels = video.frames * 2 - 1
        latents = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
        latents = latents.permute(1, 0, 2, 3)[None].contiguous()  # [1, C, F, h, w]
        embeds, _ = pipe.encode_prompt(source, "cpu", 1, False)
        inverse = DDIMInverseScheduler.from_config(pipe.scheduler.config, clip_sample=False)
        inverse.set_timesteps(steps)
        for t in inverse.timesteps:
            pred = pipe.unet(latents, t, encoder_hidden_states=embeds).sample
            latents = inverse.step(pred, t, latents).prev_sample
        return pipe(edited, latents=latents, num_inference_steps=steps, guidance_scale=guidance,
                    generator=torch.Generator("cpu").manual_seed(seed), output_type="pt").frames[0]

    diff = (ours() - script()).abs().max().item()
    ta, tb = interleaved(ours, script, repeats)
    ratio = median_ratio(ta, tb)
    return [Row("edit vs hand-written", f"reelgraph / diffusers script, invert+denoise {steps} steps, "
                f"8x32x32, {threads} thread(s), {repeats} pairs; max frame diff {diff:.1e}",
                f"{ratio:.3f}", "<= 1.02", ratio <= 1.02)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    print_rows(run(args.quick, threads=args.threads))
