"""Shared pieces of the benchmarks: a result row, the machine's description, and timing helpers.

Every benchmark reports ratios measured side by side in one process run (these machines are noisy;
absolute seconds do not compare across runs). A benchmark module exposes ``run(quick=False) -> list[Row]``
and also runs alone (``python bench/<name>.py``).
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass
class Row:
    """One measured result: what, the number, the goal and whether it was met."""

    benchmark: str
    measure: str
    value: str
    goal: str
    met: bool | None

    def markdown(self) -> str:
        """The row in the RESULTS.md table."""
        mark = {True: "yes", False: "**no**", None: "-"}[self.met]
        return f"| {self.benchmark} | {self.measure} | {self.value} | {self.goal} | {mark} |"


def print_rows(rows: list[Row]) -> None:
    """Print rows as a Markdown table (for running one benchmark alone)."""
    print("| benchmark | measure | value | goal | met |\n|---|---|---|---|---|")
    for row in rows:
        print(row.markdown())


def machine() -> str:
    """A one-line description of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, "
            f"torch threads {torch.get_num_threads()}, load average at start {load:.2f}")


def interleaved(a: Callable[[], object], b: Callable[[], object], repeats: int) -> tuple[list[float], list[float]]:
    """Time ``a`` and ``b`` alternately ``repeats`` times each (noise hits both alike); seconds per call."""
    ta, tb = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a()
        t1 = time.perf_counter()
        b()
        t2 = time.perf_counter()
        ta.append(t1 - t0)
        tb.append(t2 - t1)
    return ta, tb


def median_ratio(ta: list[float], tb: list[float]) -> float:
    """Median of the pairwise ratios a/b."""
    return statistics.median(x / y for x, y in zip(ta, tb, strict=True))


def peak_rss_of(code: str, env: dict[str, str] | None = None) -> int:
    """Peak resident memory (bytes) of a fresh Python process running ``code``."""
    wrapper = code + "\nimport resource, sys\nprint('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    proc = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, check=True,
                          env={**os.environ, **(env or {})}, cwd=ROOT)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("PEAK "))
    return int(line.split()[1]) * 1024
