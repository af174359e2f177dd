"""The Ray executor on builtin:tiny: the same batch gives the same latents as the local executor, bit for bit.

One local Ray instance (2 CPUs, no dashboard) serves the whole module, and each batch runs once (a
module-scoped fixture) so the tests below only read its results: starting Ray and loading the model
in each actor is the slow part.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reelgraph import Event
from reelgraph.batch import BatchJob, BatchResult, EngineSettings, LocalExecutor, RunSpec, plan_batch, run_batch

torch = pytest.importorskip("torch")
ray = pytest.importorskip("ray")

T2V = Path(__file__).resolve().parents[2] / "workflows" / "text2video.json"
ROWS = [{"seed": 1}, {"seed": 2, "prompt": "a blue square moving up"}, {"seed": 3}, {"seed": 4, "height": 30}]


@pytest.fixture(scope="module")
def ray_cluster(reelgraph_home: Path, tiny_dir: Path) -> Iterator[Any]:
    """A local Ray instance for this module; actors inherit the private REELGRAPH_HOME (tiny model built)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def batches(ray_cluster: Any, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[list[RunSpec], BatchResult, BatchResult, list[Event]]]:
    """The same batch (3 runs, and one whose height the VAE refuses) run locally and on 2 Ray actors."""
    from reelgraph.batch_ray import RayExecutor

    root = tmp_path_factory.mktemp("batches")
    (root / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    job = BatchJob(str(T2V), outputs=("sample.latents", "save.path"),
                   engine=EngineSettings(entry_points=False, env=False), keep_values=True)
    plans = [plan_batch(T2V, root / name, sets=["steps=3", "frames=4"], params_file=root / "runs.jsonl")
             for name in ("local", "ray")]
    assert [r.run_id for r in plans[0]] == [r.run_id for r in plans[1]]
    local = run_batch(job, plans[0], root / "local", LocalExecutor())
    events: list[Event] = []
    with RayExecutor(actors=2) as executor:
        on_ray = run_batch(job, plans[1], root / "ray", executor, events=[events.append])
        assert executor.placement == {"actors": 2, "num_cpus": 1.0, "num_gpus": 0.0}
    yield plans[1], local, on_ray, events


def test_ray_latents_are_bit_identical_to_local(batches: tuple) -> None:
    runs, local, on_ray, _ = batches
    done = [r.run_id for r in runs[:3]]
    assert [on_ray.records[i]["status"] for i in done] == ["finished"] * 3
    for run_id in done:
        ours, theirs = (b.outcomes[run_id].values["sample.latents"].tensor for b in (local, on_ray))
        assert ours.shape == (1, 4, 4, 8, 8)
        assert torch.equal(ours, theirs), run_id
    first, second = (on_ray.outcomes[i].values["sample.latents"].tensor for i in done[:2])
    assert not torch.equal(first, second)


def test_ray_actors_write_into_the_run_folders(batches: tuple) -> None:
    from reelgraph.nodes.video_io import read_video

    runs, _, on_ray, _ = batches
    for spec in runs[:3]:
        path = Path(on_ray.records[spec.run_id]["outputs"]["save.path"])
        assert path.parent == Path(spec.out_dir) and path.is_file()
        assert read_video(path).num_frames == 4


def test_a_failing_run_is_recorded_the_same_on_ray(batches: tuple) -> None:
    runs, local, on_ray, _ = batches
    failing = runs[3].run_id
    errors = [b.records[failing]["error"] for b in (local, on_ray)]
    assert [(e["code"], e["node"], e["input"]) for e in errors] == [("invalid_value", "sample", "height")] * 2
    assert on_ray.failed == [failing] and on_ray.status == "finished"


def test_each_actor_loads_the_model_once_and_keeps_it(batches: tuple) -> None:
    _, _, on_ray, _ = batches
    by_worker: dict[str, list[str]] = {}
    for record in on_ray.records.values():
        by_worker.setdefault(record["worker"], []).append(record["nodes"].get("model", {}).get("status", "skipped"))
    assert by_worker and all(name.startswith("ray-") for name in by_worker)
    assert all(statuses.count("ran") == 1 and statuses[0] == "ran" for statuses in by_worker.values()), by_worker


def test_ray_streams_each_runs_events_tagged_with_its_id(batches: tuple) -> None:
    runs, _, on_ray, events = batches
    ids = {r.run_id for r in runs}
    ticks = {e.run_id for e in events if e.event == "node_progress" and e.node == "sample"}
    assert ticks == {r.run_id for r in runs[:3]}
    assert [e.run_id for e in events if e.event == "run_finished"].count(runs[0].run_id) == 1
    assert {e.run_id for e in events if e.event == "run_started"} == ids
    assert all(e.extra["batch_id"] == on_ray.batch_id for e in events)


CRASH_PLUGIN = """
import os
from reelgraph import hookimpl, node

@node("bt.crash_on", category="test")
def crash_on(x: int, crash: int) -> int:
    \"\"\"Kill the whole worker process when x == crash (what an out-of-memory kill looks like).\"\"\"
    if x == crash:
        os._exit(1)
    return x * 10

@hookimpl
def reelgraph_register_nodes(registry):
    registry.add(crash_on)
"""


def test_a_dying_actor_fails_only_its_run_and_is_restarted(ray_cluster: Any, tmp_path: Path) -> None:
    from reelgraph.batch_ray import RayExecutor

    (tmp_path / "crash_nodes.py").write_text(CRASH_PLUGIN)
    doc = {"reelgraph": 1, "name": "crash", "params": {"x": {"type": "int"}},
           "nodes": {"c": {"type": "bt.crash_on", "inputs": {"x": {"param": "x"}, "crash": 2}}}}
    (tmp_path / "crash.json").write_text(json.dumps(doc))
    runs = plan_batch(tmp_path / "crash.json", tmp_path / "b", grid=["x=1..4"])
    job = BatchJob(str(tmp_path / "crash.json"),
                   engine=EngineSettings((str(tmp_path / "crash_nodes.py"),), entry_points=False, env=False))
    events: list[Event] = []
    with RayExecutor(actors=1) as executor:
        result = run_batch(job, runs, tmp_path / "b", executor, events=[events.append])
    statuses = [result.records[r.run_id]["status"] for r in runs]
    assert statuses == ["finished", "failed", "finished", "finished"]
    error = result.records[runs[1].run_id]["error"]
    assert error["code"] == "worker_died" and "died" in error["message"]
    assert [result.records[r.run_id]["outputs"] for r in runs[2:]] == [{"c.result": 30}, {"c.result": 40}]
    # the driver says the run ended even though its worker could not
    assert [e.extra["status"] for e in events if e.event == "run_finished" and e.run_id == runs[1].run_id] == \
        ["failed"]
