"""Make the small procedural clips shipped in ``workflows/assets/`` (deterministic; a few KB each).

Run: ``python tools/make_assets.py``. Two clips, 8 frames of 32x32 at 8 fps:

- ``red_circle_right.mp4``: the edit workflow's default source, a clip of the coloured-shapes world the default
  model was trained on (``reelgraph.nodes.shapes_dataset``, held-out dataset seed ``ASSET_SEED``).
- ``red_circle_left.mp4``: a red disc moving left over a light grey background, drawn here (tests of
  interpolation, metrics and tuning use it).
"""

from __future__ import annotations

from pathlib import Path

import torch

from reelgraph.nodes.shapes_dataset import find_clips
from reelgraph.nodes.values import Video
from reelgraph.nodes.video_io import write_video

ASSETS = Path(__file__).resolve().parents[1] / "workflows" / "assets"
#: The dataset seed the shipped shapes clips come from (the training run uses another).
ASSET_SEED = 2000


def moving_disc(
    frames: int = 8,
    size: int = 32,
    radius: float = 6.0,
    color: tuple[float, float, float] = (0.9, 0.1, 0.1),
    dx: float = -2.0,
    dy: float = 0.0,
) -> Video:
    """A soft-edged disc moving by (dx, dy) pixels per frame across a light grey background."""
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    out = torch.empty(frames, 3, size, size)
    cx0, cy0 = size / 2 - dx * (frames - 1) / 2, size / 2 - dy * (frames - 1) / 2
    for f in range(frames):
        dist = ((xs - (cx0 + dx * f)) ** 2 + (ys - (cy0 + dy * f)) ** 2).sqrt()
        alpha = (radius + 0.5 - dist).clamp(0, 1)
        for c in range(3):
            out[f, c] = 0.85 * (1 - alpha) + color[c] * alpha
    return Video(out, fps=8.0)


def main() -> None:
    ASSETS.mkdir(parents=True, exist_ok=True)
    right, _ = find_clips(ASSET_SEED, "red", "circle", "right")[0]
    for name, video in (("red_circle_left.mp4", moving_disc()), ("red_circle_right.mp4", Video(right, fps=8.0))):
        path = write_video(video, ASSETS / name, crf=18)
        print(f"{path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
