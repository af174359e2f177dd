"""Render the README's pictures from the shipped workflows on the default model (deterministic, CPU).

Run: ``python tools/make_readme_media.py``. Writes, under ``docs/images/``:

- ``text2video.png``: a contact sheet of ``workflows/text2video.json`` with its defaults, then the same
  workflow for the other three directions (one row per prompt, frames left to right);
- ``text2video.gif``: the default run as an animated GIF;
- ``edit_video.png``: ``workflows/edit_video.json`` with its defaults: the source clip above its edit.

Pass ``--check`` to compare with the committed PNGs instead of writing (exit 1 when they differ). The check
allows what another CPU, thread count or library build changes in float rounding: a few pixel values off by a
level or two (9 pixels off by 1 were seen on another machine), never a different picture.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"
DIRECTIONS = ("left", "right", "up", "down")
#: ``--check`` tolerance: the largest difference of one 8-bit channel value, and the share of channel values
#: that may differ at all.
MAX_LEVEL_DIFF = 2
MAX_DIFFERING = 0.005


def compare_pictures(fresh: Path, committed: Path) -> str | None:
    """None when ``fresh`` shows the same picture as ``committed`` within the tolerance, else why not."""
    import numpy as np
    from PIL import Image

    if not committed.exists():
        return "not committed"
    a = np.asarray(Image.open(fresh).convert("RGB"), dtype=np.int16)
    b = np.asarray(Image.open(committed).convert("RGB"), dtype=np.int16)
    if a.shape != b.shape:
        return f"size {a.shape[1]}x{a.shape[0]} vs {b.shape[1]}x{b.shape[0]}"
    diff = np.abs(a - b)
    share = float((diff > 0).mean())
    if diff.max() > MAX_LEVEL_DIFF or share > MAX_DIFFERING:
        return f"{int((diff > 0).sum())} values differ ({share:.2%}), by up to {int(diff.max())} levels"
    return None


def render(out: Path) -> list[Path]:
    """Run the workflows and write the pictures into ``out``; return their paths."""
    sys.path.insert(0, str(ROOT / "tools"))
    import torch
    from train_tiny import write_sheet

    from reelgraph import Engine
    from reelgraph.nodes.video_io import write_video

    torch.set_num_threads(1)
    engine = Engine(entry_points=False, env=False)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        default = engine.run(ROOT / "workflows" / "text2video.json", outputs=["decode.video"], out_dir=tmp)
        video = default.outputs["decode.video"]
        rows.append(video.frames)
        for direction in DIRECTIONS[1:]:
            params = {"prompt": f"a red circle moving {direction}"}
            result = engine.run(ROOT / "workflows" / "text2video.json", params, outputs=["decode.video"], out_dir=tmp)
            rows.append(result.outputs["decode.video"].frames)
        edit = engine.run(ROOT / "workflows" / "edit_video.json", outputs=["clip.video", "decode.video"],
                          out_dir=tmp).outputs
    write_sheet(rows, out / "text2video.png", scale=3)
    gif = write_video(video, out / "text2video.gif")
    write_sheet([edit["clip.video"].frames, edit["decode.video"].frames], out / "edit_video.png", scale=3)
    return [out / "text2video.png", gif, out / "edit_video.png"]


def main() -> int:
    """Write the pictures (or ``--check`` them)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    if not args.check:
        for path in render(IMAGES):
            print(f"{path.relative_to(ROOT)} ({path.stat().st_size} bytes)")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = render(Path(tmp))
        stale = {p.name: why for p in fresh if p.suffix == ".png"
                 if (why := compare_pictures(p, IMAGES / p.name)) is not None}
    print("differ: " + "; ".join(f"{name}: {why}" for name, why in stale.items()) if stale else "up to date")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
