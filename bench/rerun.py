"""Re-run savings: what the cache buys when only part of a workflow changes.

* warm re-run: text2video run cold (fresh engine, model cache cleared), then again after changing only
  the output path: every node but ``save`` comes from the cache. Goal: >= 20x faster than cold.
* prompt change: edit_video cold, then again with only the edited prompt changed: model loading, the
  source's VAE encode and its inversion are cached. Goal: >= 3x faster than cold.
Cold and warm alternate, each cold run on a fresh engine with the process-wide model cache cleared (the
libraries stay imported). The prompt change is also measured the way a user meets it: the first run in a
fresh process (imports, thread choice and model load included) vs the re-run in that process.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import ROOT, Row, print_rows


def _measure(workflow: Path, base: dict, change: dict, repeats: int, out: Path) -> tuple[float, float, list[str]]:
    from reelgraph import Engine
    from reelgraph.nodes.model_loading import clear_model_cache

    cold, warm = [], []
    ran: list[str] = []
    for i in range(repeats):
        clear_model_cache()
        engine = Engine(entry_points=False, env=False)
        t0 = time.perf_counter()
        engine.run(workflow, {**base, "output": f"cold-{i}.mp4"}, out_dir=out)
        t1 = time.perf_counter()
        result = engine.run(workflow, {**base, **change, "output": f"warm-{i}.mp4"}, out_dir=out)
        t2 = time.perf_counter()
        cold.append(t1 - t0)
        warm.append(t2 - t1)
        ran = result.ran
    return statistics.median(cold), statistics.median(warm), ran


FRESH = """
import json, time, tempfile
import reelgraph
engine = reelgraph.Engine(entry_points=False, env=False)
out = tempfile.mkdtemp()
t0 = time.perf_counter()
engine.run({wf!r}, {{"steps": 20}}, out_dir=out)
t1 = time.perf_counter()
engine.run({wf!r}, {{"steps": 20, "prompt": "a green circle moving left"}}, out_dir=out)
t2 = time.perf_counter()
print("TIMES", json.dumps([t1 - t0, t2 - t1]))
"""


def _fresh_process(workflow: Path, repeats: int) -> tuple[float, float]:
    import json
    import subprocess
    import sys

    cold, warm = [], []
    for _ in range(repeats):
        proc = subprocess.run([sys.executable, "-c", FRESH.format(wf=str(workflow))], capture_output=True,
                              text=True, check=True, cwd=ROOT)
        c, w = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("TIMES"))[5:])
        cold.append(c)
        warm.append(w)
    return statistics.median(cold), statistics.median(warm)


def run(quick: bool = False) -> list[Row]:
    """Cold / warm ratios for the two re-run cases."""
    import torch

    torch.set_num_threads(1)
    repeats = 2 if quick else 5
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        cold, warm, ran = _measure(ROOT / "workflows" / "text2video.json", {"steps": 20}, {}, repeats, out)
        rows.append(Row("warm re-run", f"text2video cold / re-run with a new output path (re-ran: {', '.join(ran)}); "
                        f"cold {cold:.2f} s", f"{cold / warm:.1f}x", ">= 20x", cold / warm >= 20))
        cold, warm, ran = _measure(ROOT / "workflows" / "edit_video.json", {"steps": 20},
                                   {"prompt": "a green circle moving left"}, repeats, out)
        rows.append(Row("prompt change", f"edit_video cold / re-run with a new prompt, libraries already imported "
                        f"(re-ran: {', '.join(ran)}); cold {cold:.2f} s", f"{cold / warm:.1f}x", ">= 3x",
                        cold / warm >= 3))
        cold, warm = _fresh_process(ROOT / "workflows" / "edit_video.json", 1 if quick else 3)
        rows.append(Row("prompt change", f"edit_video first run in a fresh process / re-run with a new prompt in it; "
                        f"cold {cold:.2f} s", f"{cold / warm:.1f}x", ">= 3x", cold / warm >= 3))
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    print_rows(run(parser.parse_args().quick))
