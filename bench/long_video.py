"""Long and large videos: peak memory of tiled vs untiled VAE decode as the frame size grows.

Each measurement runs in its own subprocess, so its peak resident set size (``ru_maxrss``) is its own.
The child builds a VAE, draws N(0, 1) latents for the frame size, records its RSS peak so far (model,
latents, libraries), decodes, and reports the new peak. ``decode MB`` is the growth the decode caused:
activations plus the output frames. Untiled, the activations grow with the frame area; tiled, they are
bounded by the tile, so only the output (3 floats per pixel) grows.

The VAE is an ``AutoencoderKL`` with random weights and the Stable Diffusion layout shrunk in width:
four blocks (spatial factor 8) of ``(32, 64, 128, 128)`` channels, with the mid-block attention. Real SD
VAEs are 4x wider, so their activations, and the gap, are larger. ``--vae tiny`` uses ``builtin:tiny``
instead (factor 4). One torch thread. Run: ``python bench/long_video.py [--sizes 256,512,768,1024]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any

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


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Decode once as ``spec`` says, in this process, and report memory and time."""
    import torch

    from reelgraph.nodes import sampling
    from reelgraph.nodes.vae_tiling import tiled_vae_decode

    torch.set_num_threads(1)
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


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``child(spec)`` in a fresh interpreter and return its report."""
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          check=False)
    if proc.returncode:
        raise RuntimeError(f"child {spec} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="256,512,768,1024", help="square frame sizes in pixels")
    parser.add_argument("--frames", type=int, default=1, help="frames per clip (decoded one at a time)")
    parser.add_argument("--tile", type=int, default=256, help="tile size in pixels for the tiled runs")
    parser.add_argument("--overlap", type=int, default=64, help="tile overlap in pixels")
    parser.add_argument("--vae", choices=["wide", "tiny"], default="wide")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    print(f"VAE decode, {args.vae} VAE, {args.frames} frame(s), tiles of {args.tile} px overlapping {args.overlap} "
          "px; peak RSS of a fresh process, decode MB = growth during the decode")
    print("| frame (px) | untiled decode MB | tiled decode MB | output MB | untiled peak MB | tiled peak MB "
          "| untiled s | tiled s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size in (int(s) for s in args.sizes.split(",")):
        base = {"vae": args.vae, "size": size, "frames": args.frames, "overlap": args.overlap}
        whole = measure({**base, "tile": None})
        tiled = measure({**base, "tile": args.tile})
        output_mb = args.frames * 3 * size * size * 4 / 2**20
        print(f"| {size} | {whole['peak_mb'] - whole['before_mb']:.0f} | {tiled['peak_mb'] - tiled['before_mb']:.0f} "
              f"| {output_mb:.0f} | {whole['peak_mb']:.0f} | {tiled['peak_mb']:.0f} | {whole['seconds']:.1f} "
              f"| {tiled['seconds']:.1f} |")


if __name__ == "__main__":
    main()
