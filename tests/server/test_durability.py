"""Nothing accepted is lost: kill -9 with a queue (and submissions in flight), and a full state disk.

Both run the real server (uvicorn in a subprocess) over real SQLite, and count completions three ways: the job's
final status, the store's audit trail of transitions, and the ``s.mark`` node's log of runs that completed.
"""

from __future__ import annotations

import collections
import copy
import json
import resource
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from .conftest import FINAL, HELLO, slow_workflow, wait_for


def transitions(state: Path) -> list[tuple[str, str, int]]:
    with sqlite3.connect(state / "jobs.sqlite3") as db:
        return list(db.execute("SELECT job, status, attempt FROM transitions ORDER BY rowid"))


def completions(state: Path) -> dict[str, int]:
    with sqlite3.connect(state / "jobs.sqlite3") as db:
        return dict(db.execute("SELECT id, completions FROM jobs"))


def all_final(client: httpx.Client, ids: set[str]) -> dict[str, dict[str, Any]] | None:
    jobs = {job_id: client.get(f"/api/jobs/{job_id}").json() for job_id in ids}
    return jobs if all(j["status"] in FINAL for j in jobs.values()) else None


def test_kill_9_then_restart_finishes_every_accepted_job_exactly_once(live_server: Any, tmp_path: Path) -> None:
    server = live_server("--workers", "1").start()
    client = server.client()
    accepted: list[str] = []
    tags: dict[str, str] = {}
    for i in range(8):
        r = client.post("/api/jobs", json={"workflow": slow_workflow(steps=10 + i, delay=0.2, tag=f"job{i}")})
        assert r.status_code == 201
        accepted.append(r.json()["id"])
        tags[r.json()["id"]] = f"job{i}"

    # more clients keep submitting while the server dies: each 201 they got must finish too
    stop = threading.Event()
    racing: list[str] = []

    def submitter() -> None:
        with server.client(timeout=5.0) as c:
            n = 0
            while not stop.is_set() and n < 200:
                n += 1
                try:
                    r = c.post("/api/jobs", json={"workflow": HELLO, "params": {"seed": 1000 + n}})
                except httpx.TransportError:
                    time.sleep(0.02)
                    continue
                if r.status_code == 201:
                    racing.append(r.json()["id"])

    thread = threading.Thread(target=submitter)
    thread.start()
    # kill while one job is in the middle of its slow node, its first node done (and in the disk cache)
    def in_progress() -> str | None:
        for job in client.get("/api/jobs", params={"status": "running"}).json()["jobs"]:
            done = client.get(f"/api/jobs/{job['id']}").json()
            finished_before = sum(1 for j in accepted if client.get(f"/api/jobs/{j}").json()["status"] == "finished")
            if finished_before >= 2 and done["status"] == "running":
                with client.stream("GET", f"/api/jobs/{job['id']}/events") as r:
                    for line in r.iter_lines():
                        if '"node_progress"' in line and '"i": 3,' in line:
                            return str(job["id"])
        return None

    victim = wait_for(in_progress, 120, every=0.02, what="a job in the middle of its slow node")
    server.kill9()
    stop.set()
    thread.join(30)
    finished_before_kill = {j for j, s, _ in transitions(server.state_dir) if s == "finished"}
    assert victim in accepted and victim not in finished_before_kill
    assert len(finished_before_kill & set(accepted)) >= 2

    server.start()
    client = server.client()
    known = set(accepted) | set(racing)
    # a submission committed just before the kill may never have heard its 201: it is a job all the same
    every = {j["id"] for j in client.get("/api/jobs", params={"limit": 500}).json()["jobs"]}
    assert known <= every and len(every - known) <= 1
    assert {p.name for p in (server.state_dir / "jobs").iterdir()} == every  # no half-made job left behind
    jobs = wait_for(lambda: all_final(client, every), 240, every=0.2, what="every accepted job to end")
    assert {j["status"] for j in jobs.values()} == {"finished"}
    # exactly once: one 'finished' in the audit trail and one recorded completion per job
    finished = collections.Counter(j for j, s, _ in transitions(server.state_dir) if s == "finished")
    assert set(finished) == every and set(finished.values()) == {1}
    assert {j: completions(server.state_dir)[j] for j in every} == dict.fromkeys(every, 1)
    # the mark node really ran once per slow job, never twice (the victim was killed before reaching it)
    marks = collections.Counter((tmp_path / "marks.log").read_text().split())
    assert marks == collections.Counter(tags.values())
    # the victim ran twice, the second time from the shared disk cache for the node that had finished
    assert jobs[victim]["attempts"] == 2
    assert jobs[victim]["timings"]["nodes"]["first"]["status"] == "cached"
    assert jobs[victim]["timings"]["nodes"]["slow"]["status"] == "ran"
    assert all(jobs[j]["attempts"] == 1 for j in finished_before_kill & every)


def _limit_file_size(limit: int) -> Any:
    def preexec() -> None:  # in the server process only: every file it writes stops growing at `limit` bytes
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def test_a_full_state_disk_refuses_with_507_and_loses_nothing_accepted(live_server: Any) -> None:
    server = live_server("--workers", "1").start(preexec=_limit_file_size(1024 * 1024))
    client = server.client()
    padded = copy.deepcopy(HELLO)
    padded["description"] = "x" * 8000  # each job takes some room in the queue database
    accepted: list[str] = []
    refusal: dict[str, Any] | None = None
    for i in range(200):
        r = client.post("/api/jobs", json={"workflow": padded, "params": {"seed": i}})
        if r.status_code == 201:
            accepted.append(r.json()["id"])
            continue
        assert r.status_code == 507, r.text
        refusal = r.json()
        break
    assert refusal is not None, "the file size limit was never reached"
    assert refusal["error"]["code"] == "storage_full" and refusal["error"]["where"] == "state-dir"
    assert len(accepted) >= 5
    # still full: refusals stay located JSON errors, and reading goes on working
    again = client.post("/api/jobs", json={"workflow": padded, "params": {"seed": 999}})
    assert again.status_code == 507 and again.json()["error"]["code"] == "storage_full"
    assert client.get("/api/health").status_code == 200
    assert server.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a clean shutdown
    # room again: every accepted job finishes, and none of the refused ones exists
    server.start(preexec=lambda: None)
    client = server.client()
    jobs = wait_for(lambda: all_final(client, set(accepted)), 60, every=0.2, what="the accepted jobs")
    assert {j["status"] for j in jobs.values()} == {"finished"}
    assert [jobs[j]["params"]["seed"] for j in accepted] == list(range(len(accepted)))
    listed = client.get("/api/jobs", params={"limit": 500}).json()["jobs"]
    assert sorted(j["id"] for j in listed) == sorted(accepted)
    assert {p.name for p in (server.state_dir / "jobs").iterdir()} == set(accepted)
    counts = collections.Counter(j for j, s, _ in transitions(server.state_dir) if s == "finished")
    assert counts == collections.Counter(accepted)
    json.loads((server.state_dir / "jobs" / accepted[0] / "workflow.json").read_text())
