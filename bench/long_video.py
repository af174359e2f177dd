"""Long and large videos: peak memory of windowed vs un-windowed denoising as the frame count grows, and of
tiled vs untiled VAE decode as the frame size grows.

Each measurement runs in its own subprocess, so its peak resident set size (``ru_maxrss``) is its own. The
child loads its model, prepares its inputs, records its RSS peak so far (model, inputs, libraries), runs the
one operation, and reports the new peak; ``MB`` columns are the growth that operation caused. The
allocator adds run-to-run noise of up to about 50 MB, so each denoising point is the least of two runs.

* Denoising: ``builtin:tiny``'s UNet3D, 2 steps with classifier-free guidance (batch 2) at 128x128 px
  (32x32 latents). Without windows the UNet3D's activations (and its temporal attention) grow with the frame
  count; with ``context_frames`` 16 (overlap 4) it sees 16 frames per call, whatever the clip's length, and
  only the clip's latents and the fused prediction (4 floats per latent pixel per frame) grow.
* VAE decode: an ``AutoencoderKL`` with random weights and the Stable Diffusion layout shrunk in width: four
  blocks (spatial factor 8) of ``(32, 64, 128, 128)`` channels, with the mid-block attention. Real SD VAEs are
  4x wider, so their activations, and the gap, are larger. ``--vae tiny`` uses ``builtin:tiny``'s instead
  (factor 4). Untiled, the activations grow with the frame area; tiled, they are bounded by the tile, so only
  the output (3 floats per pixel) grows.

One torch thread. Run: ``python bench/long_video.py [--quick] [--part denoise|vae|all]``; ``run(quick)``
returns the rows for ``run_all.py``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any

from common import Row, print_rows

WIDE_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [32, 64, 128, 128],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 16,
    "scaling_factor": 0.18215,
}


def _rss_mb() -> float:
    """This process's peak resident set size so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _load_vae(kind: str) -> Any:
    """A ``VAE`` handle: the seeded wide bench VAE or ``builtin:tiny``'s."""
    import torch

    from reelgraph.nodes.values import VAE

    if kind == "tiny":
        from reelgraph.nodes.model_loading import load_model

        return load_model("builtin:tiny", device="cpu")[1]
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return VAE(AutoencoderKL(**WIDE_VAE).eval(), "bench:wide")


def _decode_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Decode once as ``spec`` says, in this process, and report memory and time."""
    import torch

    from reelgraph.nodes import sampling
    from reelgraph.nodes.vae_tiling import tiled_vae_decode

    vae = _load_vae(spec["vae"])
    size, frames, factor = spec["size"], spec["frames"], vae.scale_factor
    latents = torch.randn(1, 4, frames, size // factor, size // factor, generator=torch.Generator().manual_seed(0))
    before = _rss_mb()
    start = time.perf_counter()
    if spec["tile"]:
        video = tiled_vae_decode(vae, latents, spec["tile"], spec["overlap"], chunk_frames=1)
    else:
        video = sampling.vae_decode(vae, latents, chunk_frames=1)
    seconds = time.perf_counter() - start
    assert video.frames.shape == (frames, 3, size, size)
    return {"before_mb": before, "peak_mb": _rss_mb(), "seconds": seconds}


def _denoise_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Denoise once with or without context windows as ``spec`` says, and report memory and time."""
    from reelgraph.nodes import sampling
    from reelgraph.nodes.model_loading import load_model

    unet, _, text_encoder, scheduler = load_model("builtin:tiny", device="cpu")
    cond = sampling.encode_prompt(text_encoder, "a red circle moving left", "blurry", guidance=True)
    before = _rss_mb()
    start = time.perf_counter()
    latents = sampling.denoise(unet, scheduler, cond, spec["frames"], spec["size"], spec["size"], spec["steps"],
                               7.5, 0, context_frames=spec["context"], context_overlap=spec["overlap"])
    seconds = time.perf_counter() - start
    assert latents.shape[2] == spec["frames"]
    return {"before_mb": before, "peak_mb": _rss_mb(), "seconds": seconds}


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the measurement ``spec`` names (``kind``: ``decode`` or ``denoise``) in this process."""
    import torch

    torch.set_num_threads(1)
    return _denoise_child(spec) if spec.get("kind") == "denoise" else _decode_child(spec)


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``child(spec)`` in a fresh interpreter and return its report."""
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          check=False)
    if proc.returncode:
        raise RuntimeError(f"child {spec} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_least(spec: dict[str, Any], repeats: int) -> dict[str, Any]:
    """The report with the least growth of ``repeats`` fresh-process runs: the allocator adds tens of MB of
    run-to-run noise on top of what the operation needs, never less."""
    return min((measure(spec) for _ in range(repeats)), key=_growth)


def _growth(report: dict[str, Any]) -> float:
    """MB the measured operation added to the process's peak."""
    return report["peak_mb"] - report["before_mb"]


def _detail(reports: dict[int, dict[str, Any]]) -> str:
    """``point: growth MB`` for every point of a curve."""
    return ", ".join(f"{point}: {_growth(report):.0f} MB" for point, report in reports.items())


def denoise_memory(counts: list[int], context: int = 16, overlap: int = 4, size: int = 128, steps: int = 2,
                   repeats: int = 2) -> list[Row]:
    """Print the windowed vs un-windowed denoising table and return its rows (growth ratio, first to last)."""
    print(f"\nDenoising, builtin:tiny UNet3D, {size}x{size} px, {steps} steps with guidance; windows of {context} "
          f"frames overlapping {overlap}; peak RSS of a fresh process, MB = growth during denoising (least of "
          f"{repeats} runs)")
    print("| frames | un-windowed MB | windowed MB | un-windowed s | windowed s |\n|---:|---:|---:|---:|---:|")
    whole, windowed = {}, {}
    for frames in counts:
        base = {"kind": "denoise", "frames": frames, "size": size, "steps": steps, "overlap": overlap}
        whole[frames] = measure_least({**base, "context": None}, repeats)
        windowed[frames] = measure_least({**base, "context": context}, repeats)
        print(f"| {frames} | {_growth(whole[frames]):.0f} | {_growth(windowed[frames]):.0f} "
              f"| {whole[frames]['seconds']:.1f} | {windowed[frames]['seconds']:.1f} |", flush=True)
    first, last = counts[0], counts[-1]
    win_ratio = _growth(windowed[last]) / _growth(windowed[first])
    whole_ratio = _growth(whole[last]) / _growth(whole[first])
    return [
        Row("long video denoise, windowed", f"peak RSS growth while denoising, windows of {context} "
            f"({_detail(windowed)})", f"{win_ratio:.2f}x ({first} -> {last} frames)", "<= 1.5x", win_ratio <= 1.5),
        Row("long video denoise, un-windowed", f"the same without windows ({_detail(whole)})",
            f"{whole_ratio:.2f}x ({first} -> {last} frames)", "grows (contrast)", None),
    ]


def decode_memory(sizes: list[int], frames: int = 1, tile: int = 256, overlap: int = 64,
                  vae: str = "wide") -> list[Row]:
    """Print the tiled vs untiled VAE decode table and return its rows (growth ratio, smallest to largest)."""
    print(f"\nVAE decode, {vae} VAE, {frames} frame(s), tiles of {tile} px overlapping {overlap} px; peak RSS of a "
          "fresh process, decode MB = growth during the decode")
    print("| frame (px) | untiled decode MB | tiled decode MB | output MB | untiled peak MB | tiled peak MB "
          "| untiled s | tiled s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    whole, tiled = {}, {}
    for size in sizes:
        base = {"kind": "decode", "vae": vae, "size": size, "frames": frames, "overlap": overlap}
        whole[size] = measure({**base, "tile": None})
        tiled[size] = measure({**base, "tile": tile})
        output_mb = frames * 3 * size * size * 4 / 2**20
        print(f"| {size} | {_growth(whole[size]):.0f} | {_growth(tiled[size]):.0f} | {output_mb:.0f} "
              f"| {whole[size]['peak_mb']:.0f} | {tiled[size]['peak_mb']:.0f} | {whole[size]['seconds']:.1f} "
              f"| {tiled[size]['seconds']:.1f} |", flush=True)
    first, last = sizes[0], sizes[-1]
    tiled_ratio = _growth(tiled[last]) / _growth(tiled[first])
    whole_ratio = _growth(whole[last]) / _growth(whole[first])
    return [
        Row("large frame decode, tiled", f"peak RSS growth of a {vae}-VAE decode, {tile} px tiles "
            f"({_detail(tiled)})",
            f"{tiled_ratio:.2f}x ({first} -> {last} px)", "<= 2x", tiled_ratio <= 2),
        Row("large frame decode, untiled", f"the same untiled ({_detail(whole)})",
            f"{whole_ratio:.2f}x ({first} -> {last} px)", "grows (contrast)", None),
    ]


def run(quick: bool = False) -> list[Row]:
    """Both memory curves; prints their tables and returns the rows for ``run_all.py``."""
    counts = [16, 64] if quick else [16, 32, 64, 128]
    sizes = [256, 1024] if quick else [256, 512, 768, 1024]
    return denoise_memory(counts) + decode_memory(sizes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["denoise", "vae", "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="fewer points (run_all's --quick)")
    parser.add_argument("--frames-list", default=None, help="frame counts of the denoising curve, e.g. 16,32,64,128")
    parser.add_argument("--context", type=int, default=16, help="context_frames of the windowed runs")
    parser.add_argument("--context-overlap", type=int, default=4, help="context_overlap of the windowed runs")
    parser.add_argument("--sizes", default=None, help="square frame sizes in pixels of the decode curve")
    parser.add_argument("--frames", type=int, default=1, help="frames per decoded clip (decoded one at a time)")
    parser.add_argument("--tile", type=int, default=256, help="tile size in pixels for the tiled runs")
    parser.add_argument("--overlap", type=int, default=64, help="tile overlap in pixels")
    parser.add_argument("--vae", choices=["wide", "tiny"], default="wide")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    rows: list[Row] = []
    if args.part in ("denoise", "all"):
        counts = args.frames_list or ("16,64" if args.quick else "16,32,64,128")
        rows += denoise_memory([int(n) for n in counts.split(",")], args.context, args.context_overlap)
    if args.part in ("vae", "all"):
        sizes = args.sizes or ("256,1024" if args.quick else "256,512,768,1024")
        rows += decode_memory([int(n) for n in sizes.split(",")], args.frames, args.tile, args.overlap, args.vae)
    print()
    print_rows(rows)


if __name__ == "__main__":
    main()
