"""Long-video memory: peak RSS of load -> VAE encode -> VAE decode -> save for 64 to 512 frames.

Each size runs in a fresh process (peak RSS is per process) on a generated clip at 64x64. The goal is
that peak memory grows at most 1.3x from 64 to 512 frames: frames are decoded and encoded in chunks
and written one at a time, so only the clip itself (and its latents) grow with the frame count.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import Row, peak_rss_of, print_rows

WORKFLOW = {
    "reelgraph": 1,
    "params": {"clip": {"type": "str"}},
    "nodes": {
        "model": {"type": "load_model", "inputs": {"source": "builtin:tiny"}},
        "clip": {"type": "load_video", "inputs": {"path": {"param": "clip"}}},
        "encode": {"type": "vae_encode", "inputs": {"vae": {"from": "model.vae"}, "video": {"from": "clip.video"}}},
        "decode": {"type": "vae_decode",
                   "inputs": {"vae": {"from": "model.vae"}, "latents": {"from": "encode.latents"}}},
        "save": {"type": "save_video", "inputs": {"video": {"from": "decode.video"}, "path": "roundtrip.mp4"}},
    },
}

CODE = """
import json, torch
torch.set_num_threads(1)
import reelgraph
reelgraph.run(json.loads({doc!r}), params={{"clip": {clip!r}}}, out_dir={out!r}, allow_paths=[{out!r}])
"""


def _make_clip(path: Path, frames: int, size: int) -> None:
    import torch

    from reelgraph.nodes.values import Video
    from reelgraph.nodes.video_io import write_video

    t = torch.linspace(0, 1, frames)[:, None, None, None]
    x = torch.linspace(0, 1, size)[None, None, None, :]
    y = torch.linspace(0, 1, size)[None, None, :, None]
    frames_t = torch.cat([(x + t) % 1 * torch.ones_like(y), (y + t) % 1 * torch.ones_like(x), (x * y + t) % 1], 1)
    write_video(Video(frames_t.float(), fps=24.0), path)


def run(quick: bool = False, size: int = 64) -> list[Row]:
    """Peak RSS per frame count, and the 512/64 ratio."""
    counts = (64, 256) if quick else (64, 128, 256, 512)
    peaks = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for n in counts:
            clip = out / f"clip{n}.mp4"
            _make_clip(clip, n, size)
            peaks[n] = peak_rss_of(CODE.format(doc=json.dumps(WORKFLOW), clip=str(clip), out=str(out)))
    ratio = peaks[counts[-1]] / peaks[counts[0]]
    detail = ", ".join(f"{n}: {peaks[n] / 2**20:.0f} MiB" for n in counts)
    return [Row("long video memory", f"peak RSS, load->encode->decode->save at {size}x{size} ({detail})",
                f"{ratio:.2f}x ({counts[0]} -> {counts[-1]} frames)", "<= 1.3x", ratio <= 1.3)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    print_rows(run(args.quick, args.size))
