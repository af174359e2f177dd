"""Issue 16, batches: grids are counted before they are expanded, two batches on one folder keep every record,
and a node calling sys.exit fails its run, not the batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reelgraph import Engine, hookimpl, node
from reelgraph.batch import (
    MANIFEST_NAME,
    BatchJob,
    BatchSpecError,
    EngineSettings,
    LocalExecutor,
    Manifest,
    plan_batch,
    run_batch,
)

from conftest import TEST_PLUGIN, wf

# --- grids -------------------------------------------------------------------------------------------------------

GRID_DOC = wf({"s": {"type": "t.add", "inputs": {"a": {"param": "a"}, "b": {"param": "b"}}}},
              params={"a": {"type": "int", "default": 1}, "b": {"type": "int", "default": 0}})


@pytest.fixture
def grid_wf(tmp_path: Path) -> Path:
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(GRID_DOC), encoding="utf-8")
    return path


def test_a_ten_million_run_grid_is_refused_in_bounded_memory(grid_wf: Path, tmp_path: Path) -> None:
    def limit_memory() -> None:  # a child with 1 GiB of address space: expanding 10**7 runs cannot fit
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    proc = subprocess.run([sys.executable, "-m", "reelgraph", "batch", str(grid_wf), "--plugin", TEST_PLUGIN,
                           "--grid", "a=1..10000000", "--dry-run", "--out", str(tmp_path / "b")],
                          capture_output=True, text=True, timeout=300, preexec_fn=limit_memory)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "10,000,000 values; a batch has at most 100,000 runs" in proc.stderr
    assert proc.stdout == "" and not (tmp_path / "b").exists()


def test_grid_products_are_counted_before_they_are_expanded(grid_wf: Path, tmp_path: Path) -> None:
    with pytest.raises(BatchSpecError, match="give 160,000 runs; a batch has at most 100,000"):
        plan_batch(grid_wf, tmp_path / "b", grid=["a=1..400", "b=1..400"])
    from reelgraph.batch import MAX_RUNS

    runs = plan_batch(grid_wf, tmp_path / "b", grid=["a=1..250", "b=1..400"])  # the cap itself still runs
    assert MAX_RUNS == 100_000
    assert len(runs) == 100_000 and runs[-1].params == {"a": 250, "b": 400}


# --- two batches on one folder ------------------------------------------------------------------------------------

_BATCH_SCRIPT = """
import sys, time
from pathlib import Path
from reelgraph.batch import BatchJob, EngineSettings, plan_batch, run_batch
workflow, out, grid, plugin, go = sys.argv[1:]
runs = plan_batch(workflow, out, grid=[grid])
job = BatchJob(workflow, engine=EngineSettings((plugin,), entry_points=False, env=False), detail_events=False)
while not Path(go).exists():
    time.sleep(0.001)
result = run_batch(job, runs, out)
print(result.count("finished"))
"""


def _check_all_kept(batch: Path, count: int) -> None:
    lines = (batch / MANIFEST_NAME).read_text(encoding="utf-8").splitlines()
    records = Manifest(batch / MANIFEST_NAME).load()
    assert len(records) == count
    assert {r["status"] for r in records.values()} == {"finished"}
    assert {r["params"]["a"] for r in records.values()} == set(range(count))
    assert len(lines) == count  # compacted once both ended: one line per run, none lost
    assert not [p.name for p in batch.iterdir() if ".tmp" in p.name]


def test_two_batch_processes_on_one_folder_keep_every_record(grid_wf: Path, tmp_path: Path) -> None:
    batch, go = tmp_path / "b", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _BATCH_SCRIPT, str(grid_wf), str(batch), grid, TEST_PLUGIN,
                               str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
             for grid in ("a=0..299", "a=300..599")]
    go.touch()
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    assert [out.strip() for out, _ in outputs] == ["300", "300"]
    _check_all_kept(batch, 600)


def test_two_batch_threads_on_one_folder_keep_every_record(grid_wf: Path, tmp_path: Path,
                                                           make_engine: Callable[..., Engine]) -> None:
    batch = tmp_path / "b"
    plans = [plan_batch(grid_wf, batch, grid=[grid]) for grid in ("a=0..199", "a=200..399")]
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def one(runs: list[Any]) -> None:
        executor = LocalExecutor(make_engine())
        start.wait()
        try:
            run_batch(BatchJob(str(grid_wf), detail_events=False), runs, batch, executor)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(runs,)) for runs in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors
    _check_all_kept(batch, 400)


# --- sys.exit in a node -------------------------------------------------------------------------------------------


@node("it.exit_on", category="test")
def exit_on(a: int, code: int = 2) -> int:
    """Return ``a``, or call ``sys.exit(3)`` when ``a == code``: a node that ends the process."""
    if a == code:
        sys.exit(3)
    return a


class _ExitNodes:
    @hookimpl
    def reelgraph_register_nodes(self, registry: Any) -> None:
        registry.add(exit_on)


def test_a_node_calling_sys_exit_fails_its_run_and_the_batch_goes_on(tmp_path: Path,
                                                                     make_engine: Callable[..., Engine]) -> None:
    path = tmp_path / "exit.json"
    path.write_text(json.dumps(wf({"first": {"type": "t.add", "inputs": {"a": {"param": "a"}}},
                                   "quit": {"type": "it.exit_on", "inputs": {"a": {"from": "first.result"}}}},
                                  params={"a": {"type": "int", "default": 1}})))
    batch = tmp_path / "b"
    runs = plan_batch(path, batch, grid=["a=1..3"])
    result = run_batch(BatchJob(str(path)), runs, batch, LocalExecutor(make_engine(_ExitNodes())))
    assert result.status == "finished"
    assert [result.records[r.run_id]["status"] for r in runs] == ["finished", "failed", "finished"]
    error = result.records[runs[1].run_id]["error"]
    assert (error["code"], error["node"], error["node_type"]) == ("node_failed", "quit", "it.exit_on")
    assert error["message"].startswith("SystemExit: 3")
    on_disk = Manifest(batch / MANIFEST_NAME).load()
    assert [on_disk[r.run_id]["status"] for r in runs] == ["finished", "failed", "finished"]  # none left "running"


def test_keyboard_interrupt_still_stops_the_batch(tmp_path: Path, make_engine: Callable[..., Engine]) -> None:
    from reelgraph.batch import RunSpec, RunWorker

    class Raising:
        def run(self, *args: Any, **kwargs: Any) -> Any:
            raise KeyboardInterrupt

    worker = RunWorker(engine=Raising())  # type: ignore[arg-type]
    with pytest.raises(KeyboardInterrupt):
        worker.run(BatchJob(str(tmp_path / "w.json"), engine=EngineSettings()), RunSpec("x", 0, {}, str(tmp_path)))
