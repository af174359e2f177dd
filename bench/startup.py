"""Startup: wall time of ``reelgraph validate`` and ``reelgraph nodes`` (no torch import), vs a bare Python.

Goal: each under 0.5 s. Also reports the ratio to ``python -c pass`` measured in the same run.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

from common import ROOT, Row, print_rows


def _wall(argv: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, cwd=ROOT)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(quick: bool = False) -> list[Row]:
    """Median wall time of each command over a few runs."""
    repeats = 3 if quick else 7
    bare = _wall([sys.executable, "-c", "pass"], repeats)
    rows = []
    for name, args in (("validate", ["validate", "workflows/text2video.json"]), ("nodes", ["nodes"])):
        wall = _wall([sys.executable, "-m", "reelgraph", *args], repeats)
        rows.append(Row("startup", f"`reelgraph {name}` wall (bare python: {bare:.3f} s)",
                        f"{wall:.3f} s ({wall / bare:.1f}x bare python)", "< 0.5 s", wall < 0.5))
    return rows


if __name__ == "__main__":
    print_rows(run())
