"""Engine overhead: validate and run generated trivial graphs of 100, 1,000 and 2,000 nodes.

Each graph is a layered DAG of ``integer`` and ``seed`` nodes (every ``seed`` node links to an earlier
node), so validation checks real links and the executor computes real cache keys. Reports validate
time, cold-run time, warm (all cached) re-run time and per-node overhead. Goal: a 2,000-node graph
validates and runs in under 1 s. Run: ``python bench/engine_overhead.py [--sizes 100,1000,2000]``.
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

from common import Row, print_rows

from reelgraph import Engine


def make_graph(n: int, seed: int = 0) -> dict[str, Any]:
    """A workflow of ``n`` trivial nodes; node i > 0 links to a random earlier node."""
    rng = random.Random(seed)
    nodes: dict[str, Any] = {"n0": {"type": "integer", "inputs": {"value": 1}}}
    for i in range(1, n):
        src = rng.randrange(i)
        out = "value" if nodes[f"n{src}"]["type"] == "integer" else "seed"
        nodes[f"n{i}"] = {"type": "seed", "inputs": {"base": {"from": f"n{src}.{out}"}, "offset": i}}
    return {"reelgraph": 1, "name": f"trivial-{n}", "nodes": nodes}


def measure(n: int, repeats: int = 3) -> dict[str, float]:
    """Best-of-``repeats`` seconds for validate, cold run (fresh engine) and warm re-run."""
    doc = make_graph(n)
    best = {"validate": float("inf"), "cold_run": float("inf"), "warm_run": float("inf")}
    for _ in range(repeats):
        engine = Engine(entry_points=False, env=False)
        t0 = time.perf_counter()
        problems = engine.validate(doc)
        t1 = time.perf_counter()
        assert not problems, problems[:3]
        result = engine.run(doc)
        t2 = time.perf_counter()
        assert len(result.ran) == n
        warm = engine.run(doc)
        t3 = time.perf_counter()
        assert not warm.ran  # only the terminal nodes are visited, all cached
        best["validate"] = min(best["validate"], t1 - t0)
        best["cold_run"] = min(best["cold_run"], t2 - t1)
        best["warm_run"] = min(best["warm_run"], t3 - t2)
    return best


def run(quick: bool = False, sizes: tuple[int, ...] = (100, 1000, 2000), repeats: int = 3) -> list[Row]:
    """Validate + run time per graph size and the per-node overhead; goal: 2,000 nodes under 1 s."""
    rows = []
    for n in sizes:
        m = measure(n, 1 if quick else repeats)
        total = m["validate"] + m["cold_run"]  # run() validates again; so this counts validation twice
        rows.append(Row("engine overhead", f"{n}-node trivial graph: validate {m['validate']:.3f} s + run "
                        f"{m['cold_run']:.3f} s; all-cached re-run {m['warm_run']:.3f} s",
                        f"{total:.3f} s ({1e6 * total / n:.0f} µs/node)", "< 1 s at 2,000 nodes",
                        total < 1 if n == 2000 else None))
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100,1000,2000")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print_rows(run(sizes=tuple(int(s) for s in args.sizes.split(",")), repeats=args.repeats))
