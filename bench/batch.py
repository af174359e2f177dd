"""Batch wall time: 16 tiny text-to-video runs, local sequential vs Ray with 2 actors, and model reuse vs reloading.

Every mode runs the shipped text2video workflow on ``builtin:tiny`` with seeds 1..16 (workflow defaults
otherwise: 20 steps, 8 frames, 32x32) and is timed end to end, from starting the process to its exit,
as a user would see it. The 1-minute load average after each mode is printed too: on a shared machine
other work skews the numbers.

* ``local``: ``reelgraph batch --executor local``, one process, one engine: the model loads once.
* ``ray``: ``reelgraph batch --executor ray --actors 2``: starts a local Ray, two actors (1 CPU each), each
  loads the model once.
* ``per run, new process``: ``reelgraph run`` once per seed, as a shell loop would: imports and model
  load 16 times.
* ``in process``, libraries already imported, timed inside this process: one engine for all runs (what the
  local executor does) vs a fresh engine and an emptied model cache per run (the model loads 16 times):
  the saving that keeping the model loaded buys, without process start-up or imports.

Torch uses ``--threads`` threads per process (``REELGRAPH_THREADS``; default 1: one per core is what each
1-CPU Ray actor gets, and more threads than free cores slows torch down badly on a busy machine). Prints a
Markdown table.

Run: ``python bench/batch.py [--runs 16] [--threads 1] [--steps 20] [--quick]`` (``--quick`` skips the
slow one-process-per-run mode); ``bench/run_all.py`` calls :func:`run`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import Row, print_rows

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "workflows" / "text2video.json"
LOCAL, RAY, PROCS = ("local executor (1 engine, sequential)", "ray executor, 2 actors x 1 CPU",
                     "per run, new process (`reelgraph run` x N)")
IN_REUSE, IN_FRESH = ("in process, 1 engine (model loaded once)", "in process, fresh engine + model load per run")


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), REELGRAPH_THREADS=str(threads), HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    env.pop("REELGRAPH_PLUGINS", None)
    return env


def _stats(records: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    """Wall time, the median run, and how often and how long the model node loaded (first load vs later)."""
    loads = [r["nodes"]["model"]["seconds"] for r in records if r["nodes"].get("model", {}).get("status") == "ran"]
    later = sorted(loads)[:-1] if len(loads) > 1 else []  # the slowest load pays the library imports
    return {"wall": wall, "runs": len(records), "load_avg": os.getloadavg()[0],
            "ok": sum(r["status"] == "finished" for r in records),
            "median_run": statistics.median(r["seconds"] for r in records), "loads": len(loads),
            "first_load": max(loads, default=0.0), "later_load": statistics.mean(later) if later else None}


def batch_cli(out: Path, runs: int, steps: int, threads: int, extra: list[str]) -> dict[str, Any]:
    """Time one ``reelgraph batch`` process; statistics from its manifest."""
    cmd = [sys.executable, "-m", "reelgraph.batch_cli", "batch", str(WORKFLOW), "--grid", f"seed=1..{runs}",
           "--set", f"steps={steps}", "--out", str(out), "--quiet", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(threads), timeout=3600)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    lines = (out / "batch.jsonl").read_text().splitlines()
    return _stats([json.loads(line) for line in lines], wall)


def in_process(out: Path, runs: int, steps: int, threads: int, reuse: bool) -> dict[str, Any]:
    """Runs in this process, libraries already imported: one engine for all (``reuse``), or a fresh engine and
    an emptied model cache for every run."""
    import torch

    from reelgraph import Engine
    from reelgraph.nodes.model_loading import clear_model_cache, load_model

    os.environ["REELGRAPH_THREADS"] = str(threads)  # what the engine's torch nodes use
    torch.set_num_threads(threads)
    load_model("builtin:tiny", device="cpu")  # imports diffusers and transformers outside the timing
    clear_model_cache()
    records = []
    engine = Engine(entry_points=False, env=False)
    t0 = time.perf_counter()
    for seed in range(1, runs + 1):
        if not reuse:
            clear_model_cache()
            engine = Engine(entry_points=False, env=False)
        r0 = time.perf_counter()
        result = engine.run(WORKFLOW, {"seed": seed, "steps": steps}, out_dir=out / str(seed), overwrite=True)
        records.append({"status": result.status, "seconds": time.perf_counter() - r0,
                        "nodes": {n: {"status": r.status, "seconds": r.seconds} for n, r in result.records.items()}})
    return _stats(records, time.perf_counter() - t0)


def per_run_processes(out: Path, runs: int, steps: int, threads: int) -> dict[str, Any]:
    """``reelgraph run`` once per seed, one process each."""
    records = []
    t0 = time.perf_counter()
    for seed in range(1, runs + 1):
        record = out / f"{seed}.json"
        cmd = [sys.executable, "-m", "reelgraph", "run", str(WORKFLOW), "--set", f"seed={seed}", "--set",
               f"steps={steps}", "--out", str(out / str(seed)), "--quiet", "--record", str(record)]
        r0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(threads), timeout=600)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
        data = json.loads(record.read_text())
        records.append({"status": data["status"], "seconds": time.perf_counter() - r0,
                        "nodes": {n["node"]: n for n in data["nodes"]}})
    return _stats(records, time.perf_counter() - t0)


def measure(runs: int, steps: int, threads: int, per_process: bool) -> list[tuple[str, dict[str, Any]]]:
    """Time every mode (see the module doc); returns (mode, statistics) pairs, the local executor first."""
    from reelgraph.nodes.tiny_models import ensure_tiny_model

    ensure_tiny_model()  # built once, outside every timing
    work = Path(tempfile.mkdtemp(prefix="reelgraph-bench-batch-"))
    modes: list[tuple[str, dict[str, Any]]] = []
    try:
        modes.append((LOCAL, batch_cli(work / "local", runs, steps, threads, [])))
        modes.append((RAY, batch_cli(work / "ray", runs, steps, threads, ["--executor", "ray", "--actors", "2"])))
        if per_process:
            modes.append((PROCS, per_run_processes(work / "procs", runs, steps, threads)))
        modes.append((IN_REUSE, in_process(work / "reuse", runs, steps, threads, reuse=True)))
        modes.append((IN_FRESH, in_process(work / "fresh", runs, steps, threads, reuse=False)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return modes


def table(modes: list[tuple[str, dict[str, Any]]]) -> str:
    """The detailed Markdown table of every mode."""
    lines = ["| mode | wall (s) | wall / run (s) | median run (s) | runs ok | model loads | slowest load (s) "
             "| other loads, mean (s) | load avg after |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in modes:
        later = f"{s['later_load']:.2f}" if s["later_load"] is not None else "-"
        lines.append(f"| {name} | {s['wall']:.1f} | {s['wall'] / s['runs']:.2f} | {s['median_run']:.2f} "
                     f"| {s['ok']}/{s['runs']} | {s['loads']} | {s['first_load']:.2f} | {later} "
                     f"| {s['load_avg']:.1f} |")
    return "\n".join(lines)


def rows_of(modes: list[tuple[str, dict[str, Any]]], runs: int) -> list[Row]:
    """The suite's rows: Ray vs local, a batch vs a process per run, and the in-process model-reuse saving."""
    stats = dict(modes)
    local, ray, reuse, fresh = stats[LOCAL], stats[RAY], stats[IN_REUSE], stats[IN_FRESH]
    rows = [
        Row("batch: ray vs local", f"{runs} tiny t2v runs end to end: local {local['wall']:.1f} s / ray 2 actors "
            f"{ray['wall']:.1f} s (incl. Ray start, a model load per actor)", f"{local['wall'] / ray['wall']:.2f}x",
            "report (~1x on 2 shared cores)", None),
        Row("batch: model reuse", f"{runs} runs in one process: fresh engine + model load per run "
            f"{fresh['wall']:.1f} s / one engine {reuse['wall']:.1f} s (a tiny load: {fresh['later_load'] or 0:.2f} s)",
            f"{fresh['wall'] / reuse['wall']:.2f}x", "report (tiny model: small)", None),
    ]
    procs = stats.get(PROCS)
    if procs is not None:
        rows.append(Row("batch: vs a process per run", f"{runs} x `reelgraph run` {procs['wall']:.1f} s / "
                        f"`reelgraph batch` {local['wall']:.1f} s", f"{procs['wall'] / local['wall']:.1f}x",
                        ">= 3x", procs["wall"] >= 3 * local["wall"]))
    return rows


def run(quick: bool = False) -> list[Row]:
    """The benchmark suite's entry point; ``quick`` skips the slow one-process-per-run mode."""
    return rows_of(measure(16, 20, 1, per_process=not quick), 16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (OMP_NUM_THREADS)")
    parser.add_argument("--quick", action="store_true", help="skip the slow one-process-per-run mode")
    args = parser.parse_args()
    modes = measure(args.runs, args.steps, args.threads, per_process=not args.quick)
    print(f"\n{args.runs} runs of text2video on builtin:tiny ({args.steps} steps, 8 frames, 32x32), "
          f"{os.cpu_count()} cores, {args.threads} torch thread(s) per process\n")
    print(table(modes) + "\n")
    print_rows(rows_of(modes, args.runs))


if __name__ == "__main__":
    main()
