"""Run every benchmark and write bench/RESULTS.md (table + machine + date).

Each benchmark runs in its own process (so memory and imports do not leak between them) and reports
ratios measured side by side within that process. ``--quick`` uses fewer repeats. Benchmarks are not
tests: CI runs none of this.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time

from common import ROOT, Row, machine

BENCHMARKS = ["t2v_vs_diffusers", "edit_vs_diffusers", "rerun", "engine_overhead", "video_memory", "startup"]
# Added by later work when present:
OPTIONAL = ["controlnet_lora", "long_video", "tune", "batch", "optim_flags", "lora_sweep", "model_load", "cold_start",
            "animatediff_vs_diffusers"]
#: Benchmarks whose full curves take minutes alone: run_all takes their quick form to stay within 15 minutes
#: (run them alone, e.g. ``python bench/long_video.py``, for every point).
QUICK_IN_SUITE = {"long_video"}

#: Everything after this line in RESULTS.md is kept when the suite rewrites the file.
KEEP_MARKER = "<!-- measured alone: kept by run_all -->"

RUNNER = """
import json, sys
sys.path.insert(0, {bench!r})
import {name} as mod
rows = mod.run(quick={quick!r})
print("ROWS" + json.dumps([r.__dict__ for r in rows]))
"""


def run_one(name: str, quick: bool) -> tuple[list[Row], float, str]:
    """Run one benchmark module in a subprocess; its rows, wall seconds, and error text if it failed."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", RUNNER.format(bench=str(ROOT / "bench"), name=name, quick=quick)],
                          capture_output=True, text=True, cwd=ROOT / "bench")
    wall = time.perf_counter() - t0
    line = next((x for x in proc.stdout.splitlines() if x.startswith("ROWS")), None)
    if proc.returncode != 0 or line is None:
        return [], wall, (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return [Row(**r) for r in json.loads(line[4:])], wall, ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    names = args.only or BENCHMARKS + [n for n in OPTIONAL if (ROOT / "bench" / f"{n}.py").exists()]
    started = time.perf_counter()
    lines = []
    for name in names:
        rows, wall, error = run_one(name, args.quick or name in QUICK_IN_SUITE)
        print(f"{name}: {len(rows)} row(s) in {wall:.0f} s {('FAILED: ' + error) if error else ''}", flush=True)
        lines += [r.markdown() for r in rows] or [f"| {name} | failed to run: {error} | - | - | **no** |"]
    total = time.perf_counter() - started
    text = "\n".join([
        "# Benchmark results", "",
        f"Written by `python bench/run_all.py{' --quick' if args.quick else ''}` on "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC in {total / 60:.1f} min.", "",
        f"Machine: {machine()}.", "",
        "Ratios are measured side by side in one process (interleaved runs); absolute seconds are only context.", "",
        "| benchmark | measure | value | goal | met |", "|---|---|---|---|---|", *lines, ""])
    results = ROOT / "bench" / "RESULTS.md"
    old = results.read_text(encoding="utf-8") if results.exists() else ""
    if KEEP_MARKER in old:  # sections measured alone (too slow for the suite) survive a new suite run
        text += "\n" + old[old.index(KEEP_MARKER):]
    results.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
