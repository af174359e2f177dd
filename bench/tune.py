"""Cost of one-shot tuning (``tune_video``): seconds per tuning step and peak memory, on the default model.

Each configuration runs in a fresh process (so peak resident memory is its own): load ``builtin:tiny``,
encode the shipped clip (resized), then run tuning steps with the node's defaults (rank 8, the
Tune-A-Video targets, AdamW) at the workflow's learning rate. Reported: the median seconds per step after
one warm-up step, the process's peak RSS, and how much tuning added over loading and encoding (the peak
before the first step). Configurations: the shipped workflow's clip (8 frames of 32x32) and a larger one
(16 frames of 128x128) with and without gradient checkpointing, to show what checkpointing saves.

Run: ``python bench/tune.py [--quick] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from common import ROOT, Row, print_rows

CHILD = """
import json, resource, statistics, sys, time
import torch
torch.set_num_threads({threads})
from reelgraph.nodes import sampling
from reelgraph.nodes.model_loading import load_model
from reelgraph.nodes.tuning import LoraTrainer, TuneSettings
from reelgraph.nodes.video_io import read_video

unet, vae, text_encoder, scheduler = load_model("builtin:tiny", device="cpu")
video = read_video({asset!r}, max_frames={frames}, height={size}, width={size})
frames = video.frames.repeat(({frames} + video.num_frames - 1) // video.num_frames, 1, 1, 1)[:{frames}]
latents = sampling.vae_encode(vae, type(video)(frames=frames, fps=video.fps)).tensor
embeds = sampling.encode_prompt(text_encoder, "a red circle moving left", guidance=False).prompt_embeds
settings = TuneSettings(steps={steps}, learning_rate=1e-2, seed=0, gradient_checkpointing={checkpointing})
trainer = LoraTrainer(unet, scheduler, latents, embeds, settings)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
trainer.step()
times = []
for _ in range({steps}):
    t0 = time.perf_counter()
    trainer.step()
    times.append(time.perf_counter() - t0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print("RESULT" + json.dumps({{"step": statistics.median(times), "peak": peak, "before": before,
                             "layers": len(trainer.names), "loss": [trainer.losses[0], trainer.losses[-1]]}}))
"""


def measure(frames: int, size: int, checkpointing: bool, steps: int, threads: int) -> dict:
    """Run one configuration in a fresh process; its median step seconds and memory figures."""
    code = CHILD.format(threads=threads, asset=str(ROOT / "workflows" / "assets" / "red_circle_left.mp4"),
                        frames=frames, size=size, steps=steps, checkpointing=checkpointing)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                          cwd=ROOT)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def _mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def run(quick: bool = False, threads: int = 1) -> list[Row]:
    """Seconds per tuning step and peak memory on builtin:tiny, for the workflow's clip and a larger one."""
    steps = 5 if quick else 20
    rows = []
    small = measure(8, 32, False, steps, threads)
    rows.append(Row("tune_video step", f"builtin:tiny, 8 frames of 32x32 (the workflow's clip), rank 8, "
                    f"{small['layers']} layers, {threads} thread(s)", f"{small['step']:.3f} s/step",
                    "<= 0.25 s (60 steps well under a minute)", small["step"] <= 0.25))
    rows.append(Row("tune_video memory", "peak RSS of the process (tuning added)",
                    f"{_mib(small['peak'])} (+{_mib(small['peak'] - small['before'])})", "-", None))
    plain = measure(16, 128, False, max(3, steps // 4), threads)
    ckpt = measure(16, 128, True, max(3, steps // 4), threads)
    for name, res in (("no checkpointing", plain), ("gradient checkpointing", ckpt)):
        rows.append(Row("tune_video step", f"builtin:tiny, 16 frames of 128x128, {name}", f"{res['step']:.3f} s/step",
                        "-", None))
        rows.append(Row("tune_video memory", f"16 frames of 128x128, {name}: peak RSS (tuning added)",
                        f"{_mib(res['peak'])} (+{_mib(res['peak'] - res['before'])})", "-", None))
    added = (ckpt["peak"] - ckpt["before"]) / max(1, plain["peak"] - plain["before"])
    rows.append(Row("gradient checkpointing", "tuning memory added with / without; time per step with / without",
                    f"{added:.2f}x memory, {ckpt['step'] / plain['step']:.2f}x time", "< 1x memory", added < 1))
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    print_rows(run(args.quick, args.threads))
