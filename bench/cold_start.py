"""Cold start: a fresh-process ``reelgraph run workflows/text2video.json`` against a plain diffusers script.

The plain script (``bench/plain_t2v.py``) does the same job: load the ``builtin:tiny`` folder with
``TextToVideoSDPipeline``, render the workflow's default prompt, seed, size, steps and guidance on one thread,
write an mp4 with PyAV. Both run as whole new processes, alternately (noise hits both alike), without a disk
cache (the default). On this tiny model a cold start is nearly all imports and exit: reelgraph imports the
same libraries as the script plus its own engine (about 0.3 s), and its command line skips Python's
interpreter teardown after a finished command (about 1.4 s with torch loaded). Goal: median ratio <= 1.0.

Run: ``python bench/cold_start.py [--quick] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, Row, median_ratio, print_rows


def _wall(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, cwd=ROOT, env=env)
    return time.perf_counter() - t0


def run(quick: bool = False, repeats: int | None = None) -> list[Row]:
    """Median whole-process wall-time ratio reelgraph / plain diffusers script."""
    from reelgraph.nodes.tiny_models import TINY_SOURCE, builtin_model

    repeats = repeats or (3 if quick else 5)
    folder = builtin_model(TINY_SOURCE)
    env = {**os.environ, "REELGRAPH_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        ours = [sys.executable, "-m", "reelgraph", "run", "workflows/text2video.json", "--quiet", "--threads", "1",
                "--overwrite", "--out", tmp]
        plain = [sys.executable, str(ROOT / "bench" / "plain_t2v.py"), str(folder), str(Path(tmp) / "plain.mp4")]
        _wall(ours, env), _wall(plain, env)  # warm the page cache for both
        ta, tb = [], []
        for _ in range(repeats):
            ta.append(_wall(ours, env))
            tb.append(_wall(plain, env))
    ratio = median_ratio(ta, tb)
    return [Row("cold start", f"fresh-process `reelgraph run workflows/text2video.json` / plain diffusers script "
                f"(bench/plain_t2v.py), {repeats} pairs (median {statistics.median(ta):.2f} s vs "
                f"{statistics.median(tb):.2f} s)", f"{ratio:.3f}", "<= 1.0", ratio <= 1.0)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    print_rows(run(args.quick, args.repeats))
