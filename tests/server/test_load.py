"""Load: 200 small jobs from 20 concurrent clients against the real server; every accepted job finishes once.

Prints submit latency (p50, p99) and throughput; ``REELGRAPH_LOAD_REPORT=FILE`` also writes them as JSON.
Bounded: 200 requests, 120 s at most.
"""

from __future__ import annotations

import collections
import json
import os
import statistics
import threading
import time
from typing import Any

from .conftest import HELLO, wait_for

JOBS, CLIENTS = 200, 20


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def test_200_jobs_from_20_clients_all_finish_exactly_once(live_server: Any) -> None:
    server = live_server("--workers", "1").start()
    latencies: list[float] = []
    accepted: list[str] = []
    refused: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(CLIENTS)

    def client_loop(index: int) -> None:
        with server.client(timeout=30.0) as client:
            barrier.wait()
            for n in range(JOBS // CLIENTS):
                t0 = time.perf_counter()
                r = client.post("/api/jobs", json={"workflow": HELLO, "params": {"seed": index * 1000 + n}})
                elapsed = time.perf_counter() - t0
                with lock:
                    latencies.append(elapsed)
                    if r.status_code == 201:
                        accepted.append(r.json()["id"])
                    else:
                        refused.append(r.status_code)

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(CLIENTS)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    submit_wall = time.perf_counter() - started
    assert refused == [] and len(accepted) == JOBS

    with server.client() as client:
        def done() -> bool:
            return bool(client.get("/api/jobs", params={"status": "finished", "limit": 1}).json()["jobs"]) and \
                client.get("/api/health").json()["jobs"]["finished"] == JOBS

        wait_for(done, 120, every=0.2, what="every job to finish")
        total_wall = time.perf_counter() - started
        jobs = []
        before = None
        while True:
            page = client.get("/api/jobs", params={"limit": 500} | ({"before": before} if before else {})).json()
            jobs += page["jobs"]
            before = page["next"]
            if before is None:
                break
    finished = collections.Counter(j["id"] for j in jobs if j["status"] == "finished")
    lost = len(set(accepted) - set(finished))
    assert lost == 0 and len(jobs) == JOBS and set(finished.values()) == {1}
    seeds = sorted(j["params"]["seed"] for j in jobs)
    assert seeds == sorted(i * 1000 + n for i in range(CLIENTS) for n in range(JOBS // CLIENTS))
    report = {
        "jobs": JOBS, "clients": CLIENTS, "submit_p50_ms": round(statistics.median(latencies) * 1000, 1),
        "submit_p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "submits_per_s": round(JOBS / submit_wall, 1), "jobs_done_per_s": round(JOBS / total_wall, 1),
        "wall_s": round(total_wall, 2), "lost": lost,
    }
    print("\nload:", json.dumps(report))
    if os.environ.get("REELGRAPH_LOAD_REPORT"):
        with open(os.environ["REELGRAPH_LOAD_REPORT"], "w", encoding="utf-8") as f:
            json.dump(report, f)
