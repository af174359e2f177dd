"""Batch runs on the engine: grid and JSON-lines expansion, the manifest, resume, failures, events, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reelgraph import Engine, Event, RunContext, hookimpl, node
from reelgraph.batch import (
    MANIFEST_NAME,
    BatchError,
    BatchJob,
    BatchSpecError,
    LocalExecutor,
    expand_params,
    make_runs,
    parse_grid,
    plan_batch,
    read_params_file,
    run_batch,
    run_id_for,
    split_values,
)
from reelgraph.batch_cli import main as batch_main
from reelgraph.workflow import ParamSpec

from conftest import TEST_PLUGIN, link, wf

DIVISIONS: list[float] = []


@node("bt.divide", category="test")
def divide(x: int, by: float) -> float:
    """Divide (raises ZeroDivisionError for ``by == 0``: a run that fails while running)."""
    DIVISIONS.append(by)
    return x / by


@node("bt.save", category="test", side_effects=True, output="path")
def save(text: str, path: str, ctx: RunContext) -> Path:
    """Write text where the engine lets it (``claim_output``: never over a file unless overwriting)."""
    target = ctx.claim_output(path, "path")
    target.write_text(text, encoding="utf-8")
    return target


class BatchNodes:
    """A plugin object adding ``bt.divide`` and ``bt.save``."""

    @hookimpl
    def reelgraph_register_nodes(self, registry: Any) -> None:
        registry.add(divide)
        registry.add(save)


SWEEP_PARAMS = {"a": {"type": "int", "default": 1}, "by": {"type": "float", "default": 1.0},
                "factor": {"type": "float", "default": 2.0}, "shape": {"type": "json", "default": [1, 1]}}


def sweep_doc() -> dict[str, Any]:
    """base (no params: shared by every run) -> sum (a) -> divide (by) -> scale (factor) -> text -> file."""
    return wf({
        "base": {"type": "t.add", "inputs": {"a": 100}},
        "sum": {"type": "t.add", "inputs": {"a": link("base.result"), "b": {"param": "a"}}},
        "div": {"type": "bt.divide", "inputs": {"x": link("sum.result"), "by": {"param": "by"}}},
        "scale": {"type": "t.scale", "inputs": {"x": link("div.result"), "factor": {"param": "factor"}}},
        "text": {"type": "t.str", "inputs": {"x": link("scale.result")}},
        "save": {"type": "bt.save", "inputs": {"text": link("text.result"), "path": "result.txt"}},
    }, params=SWEEP_PARAMS)


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """The sweep workflow as a file."""
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(sweep_doc()), encoding="utf-8")
    return path


@pytest.fixture
def local(make_engine: Callable[..., Engine]) -> LocalExecutor:
    """A local executor on an isolated engine with the chain nodes and ``bt.divide``."""
    DIVISIONS.clear()
    return LocalExecutor(make_engine(BatchNodes()))


SPECS = {name: ParamSpec(**spec) for name, spec in SWEEP_PARAMS.items()}


def manifest_lines(batch_dir: Path) -> list[dict[str, Any]]:
    """Every line of the batch's manifest, parsed."""
    return [json.loads(line) for line in (batch_dir / MANIFEST_NAME).read_text().splitlines()]


# --- expansion -----------------------------------------------------------------------------------------


def test_grid_is_the_cartesian_product_with_typed_values() -> None:
    axes = parse_grid(["a=1..3", "by=0.5,2"], SPECS)
    assert axes == [("a", [1, 2, 3]), ("by", [0.5, 2.0])]
    runs = expand_params({"factor": 3.0}, None, axes)
    assert runs == [{"factor": 3.0, "a": a, "by": by} for a in (1, 2, 3) for by in (0.5, 2.0)]
    assert all(isinstance(r["a"], int) and isinstance(r["by"], float) for r in runs)
    # ranges and single values mix; negative bounds work
    assert parse_grid(["a=-1..1,7"], SPECS) == [("a", [-1, 0, 1, 7])]
    # JSON values keep their commas
    assert split_values('[1,2],{"k":"x,y"},3') == ["[1,2]", '{"k":"x,y"}', "3"]
    assert parse_grid(["shape=[1,2],[3,4]"], SPECS) == [("shape", [[1, 2], [3, 4]])]


def test_run_ids_are_stable_and_derived_from_params(tmp_path: Path) -> None:
    from_grid = make_runs(expand_params(None, None, parse_grid(["a=1,2", "by=4"], SPECS)), tmp_path)
    lines = tmp_path / "runs.jsonl"
    lines.write_text('{"by": 4, "a": 1}\n{"a": "2", "by": 4.0}\n')  # other key order, text and int forms
    from_file = make_runs(expand_params(None, read_params_file(lines, SPECS)), tmp_path)
    assert [r.run_id for r in from_grid] == [r.run_id for r in from_file]
    assert len({r.run_id for r in from_grid}) == 2
    assert from_grid[0].run_id == run_id_for({"a": 1, "by": 4.0})
    assert from_grid[0].out_dir == str(tmp_path.resolve() / "runs" / from_grid[0].run_id)
    # the same parameters twice are one run
    assert len(make_runs([{"a": 1}, {"a": 1}, {"a": 2}], tmp_path)) == 2


def test_jsonl_rows_times_grid_over_shared_sets(tmp_path: Path) -> None:
    lines = tmp_path / "runs.jsonl"
    lines.write_text('{"a": 5}\n\n{"a": 6, "factor": 4}\n')
    rows = read_params_file(lines, SPECS)
    assert rows == [{"a": 5}, {"a": 6, "factor": 4.0}]
    runs = expand_params({"factor": 1.0, "by": 9.0}, rows, parse_grid(["by=1,2"], SPECS))
    assert runs == [{"factor": 1.0, "by": 1.0, "a": 5}, {"factor": 1.0, "by": 2.0, "a": 5},
                    {"factor": 4.0, "by": 1.0, "a": 6}, {"factor": 4.0, "by": 2.0, "a": 6}]
    assert expand_params({"a": 3}) == [{"a": 3}]


@pytest.mark.parametrize(("content", "message"), [
    ('{"a": 1}\n{"a": 2\n', "runs.jsonl:2: not valid JSON"),
    ('{"a": 1}\n[1, 2]\n', "runs.jsonl:2: each line must be a JSON object"),
    ('{"a": 1}\n{"sed": 2}\n', "runs.jsonl:2: parameter 'sed' is not declared by the workflow (declared: a, by"),
    ("\n\n", "holds no runs"),
])
def test_bad_params_lines_are_named(tmp_path: Path, content: str, message: str) -> None:
    lines = tmp_path / "runs.jsonl"
    lines.write_text(content)
    with pytest.raises(BatchSpecError) as info:
        read_params_file(lines, SPECS)
    assert message in str(info.value)


@pytest.mark.parametrize(("grid", "message"), [
    (["sed=1..3"], "parameter 'sed' is not declared"),
    (["a=3..1"], "range 3..1 is empty"),
    (["a"], "--grid wants NAME=V1,V2"),
    (["a=1,,2"], "empty value"),
    (["a=1", "a=2"], "names parameter 'a' twice"),
])
def test_bad_grids_are_usage_errors(grid: list[str], message: str) -> None:
    with pytest.raises(BatchSpecError) as info:
        parse_grid(grid, SPECS)
    assert message in str(info.value)


# --- running -------------------------------------------------------------------------------------------


def test_each_run_writes_its_own_folder_and_the_engine_is_shared(sweep: Path, tmp_path: Path,
                                                                 local: LocalExecutor, calls: list[str]) -> None:
    runs = plan_batch(sweep, tmp_path / "b", grid=["a=1..3"], sets=["by=2"])
    result = run_batch(BatchJob(str(sweep)), runs, tmp_path / "b", local)
    assert result.status == "finished" and result.count("finished") == 3 and not result.failed
    for spec, a in zip(runs, (1, 2, 3), strict=True):
        written = Path(spec.out_dir) / "result.txt"
        assert written.read_text() == f"{(100 + a) / 2 * 2:g}"
        assert result.records[spec.run_id]["outputs"] == {"save.path": str(written)}
    # one engine for the batch: the parameter-free node ran once, not once per run
    assert calls.count("t.add") == 1 + 3
    lines = manifest_lines(tmp_path / "b")
    assert [line["run_id"] for line in lines] == [r.run_id for r in runs]
    first = lines[0]
    assert first["params"] == {"by": 2.0, "a": 1} and first["status"] == "finished" and first["error"] is None
    assert first["seconds"] >= 0 and first["started_at"] <= first["finished_at"] and first["worker"] == "local"
    assert first["nodes"]["base"]["status"] == "ran" and lines[1]["nodes"]["base"]["status"] == "cached"
    assert first["workflow_digest"].startswith("sha256:")


def test_a_failing_run_leaves_the_rest_done_and_the_manifest_says_why(sweep: Path, tmp_path: Path,
                                                                      local: LocalExecutor) -> None:
    lines = tmp_path / "runs.jsonl"
    lines.write_text('{"by": 1}\n{"by": 0}\n{"a": "many"}\n{"factor": 0}\n{"by": 4}\n')
    runs = plan_batch(sweep, tmp_path / "b", params_file=lines)
    result = run_batch(BatchJob(str(sweep)), runs, tmp_path / "b", local)
    statuses = [result.records[r.run_id]["status"] for r in runs]
    assert statuses == ["finished", "failed", "failed", "failed", "finished"]
    assert all((Path(r.out_dir) / "result.txt").is_file() == (s == "finished") for r, s in zip(runs, statuses,
                                                                                               strict=True))
    errors = [result.records[r.run_id]["error"] for r in runs[1:4]]
    # a node raising while running: located at the node, with the exception's text
    assert (errors[0]["code"], errors[0]["node"], errors[0]["node_type"]) == ("node_failed", "div", "bt.divide")
    assert "ZeroDivisionError" in errors[0]["message"]
    # a parameter value the engine rejects before running: that run alone fails validation
    assert (errors[1]["code"], errors[1]["node"], errors[1]["input"]) == ("invalid_value", None, "a")
    assert (errors[2]["code"], errors[2]["node"], errors[2]["input"]) == ("invalid_value", "scale", "factor")
    assert errors[2]["problems"][0]["code"] == "invalid_value"
    assert DIVISIONS == [1.0, 0.0, 4.0]  # the invalid runs never reached a node; the last one still ran
    assert result.failed == [r.run_id for r in runs[1:4]]
    # the failure is on disk, not only in memory
    on_disk = {line["run_id"]: line for line in manifest_lines(tmp_path / "b")}
    assert on_disk[runs[1].run_id]["error"]["message"] == errors[0]["message"]


def test_resume_skips_finished_runs(sweep: Path, tmp_path: Path, make_engine: Callable[..., Engine]) -> None:
    batch = tmp_path / "b"
    runs = plan_batch(sweep, batch, grid=["by=1,0,2"])
    job = BatchJob(str(sweep))
    first = run_batch(job, runs, batch, LocalExecutor(make_engine(BatchNodes())))
    assert [first.records[r.run_id]["status"] for r in runs] == ["finished", "failed", "finished"]
    with (batch / MANIFEST_NAME).open("a") as f:
        f.write('{"run_id": "cut short by a cra')  # a crash mid-write must not break resuming

    # A new engine (nothing cached): only the failed run runs again, the others are skipped.
    events: list[Event] = []
    again = run_batch(job, runs, batch, LocalExecutor(make_engine(BatchNodes())), events=[events.append])
    assert list(again.outcomes) == [runs[1].run_id] and again.skipped == [runs[0].run_id, runs[2].run_id]
    assert [e.run_id for e in events if e.event == "run_skipped"] == again.skipped
    assert [json.loads(line)["run_id"] for line in (batch / MANIFEST_NAME).read_text().splitlines()] == \
        [r.run_id for r in runs]  # rewritten: one line per run, in batch order

    # A run whose output file is gone runs again; so does everything after the workflow changes.
    (Path(runs[2].out_dir) / "result.txt").unlink()
    third = run_batch(job, runs, batch, LocalExecutor(make_engine(BatchNodes())))
    assert set(third.outcomes) == {runs[1].run_id, runs[2].run_id}
    assert (Path(runs[2].out_dir) / "result.txt").is_file()
    sweep.write_text(json.dumps({**sweep_doc(), "description": "edited"}))
    fourth = run_batch(job, runs, batch, LocalExecutor(make_engine(BatchNodes())))
    assert set(fourth.outcomes) == {r.run_id for r in runs} and not fourth.skipped
    forced = run_batch(job, runs, batch, LocalExecutor(make_engine(BatchNodes())), force=True)
    assert len(forced.outcomes) == 3
    # a run's folder is its own: running it again replaces its files instead of adding result-1.txt
    assert sorted(p.name for p in Path(runs[0].out_dir).iterdir()) == ["result.txt"]
    assert forced.records[runs[0].run_id]["outputs"] == {"save.path": str(Path(runs[0].out_dir) / "result.txt")}


def test_events_are_tagged_with_run_and_batch_ids(sweep: Path, tmp_path: Path, local: LocalExecutor) -> None:
    runs = plan_batch(sweep, tmp_path / "b", grid=["by=1,0"])
    events: list[Event] = []
    result = run_batch(BatchJob(str(sweep)), runs, tmp_path / "b", local, events=[events.append])
    kinds = [e.event for e in events]
    assert kinds[0] == "batch_started" and kinds[-1] == "batch_finished"
    assert {e.extra["batch_id"] for e in events} == {result.batch_id}
    per_run = [e for e in events if not e.event.startswith("batch_")]
    assert {e.run_id for e in per_run} == {r.run_id for r in runs}
    assert all(e.extra["execution_id"] != e.run_id for e in per_run)
    finished = {e.run_id: e.extra["status"] for e in per_run if e.event == "run_finished"}
    assert finished == {runs[0].run_id: "finished", runs[1].run_id: "failed"}
    assert "node_started" in kinds and "node_failed" in kinds
    assert events[-1].extra | {"batch_id": None} == {"status": "finished", "runs": 2, "skipped": 0, "finished": 1,
                                                     "failed": 1, "not_run": 0, "batch_id": None}
    # without per-node detail, runs are still followed: started, failed node, finished
    quiet: list[Event] = []
    run_batch(BatchJob(str(sweep), detail_events=False), runs, tmp_path / "b", local, events=[quiet.append],
              force=True)
    assert {e.event for e in quiet} == {"batch_started", "run_started", "node_failed", "run_finished",
                                        "batch_finished"}


def test_interrupt_stops_the_batch_and_resume_finishes_it(tmp_path: Path, make_engine: Callable[..., Engine]) -> None:
    doc = wf({"s": {"type": "t.steps", "inputs": {"n": {"param": "n"}, "delay": 0.001}}},
             params={"n": {"type": "int", "default": 5}})
    path = tmp_path / "steps.json"
    path.write_text(json.dumps(doc))
    runs = plan_batch(path, tmp_path / "b", grid=["n=3..5"])
    executor = LocalExecutor(make_engine())

    def stop_second_run(ev: Event) -> None:
        if ev.event == "node_progress" and ev.run_id == runs[1].run_id:
            executor.interrupt()

    result = run_batch(BatchJob(str(path)), runs, tmp_path / "b", executor, events=[stop_second_run])
    assert result.status == "interrupted"
    assert [result.records.get(r.run_id, {}).get("status") for r in runs] == ["finished", "interrupted", None]
    assert result.not_run == [runs[1].run_id, runs[2].run_id]
    resumed = run_batch(BatchJob(str(path)), runs, tmp_path / "b", LocalExecutor(make_engine()))
    assert resumed.status == "finished" and resumed.skipped == [runs[0].run_id]
    assert resumed.count("finished") == 3


# --- the command line ----------------------------------------------------------------------------------


@pytest.fixture
def cli_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A sweep workflow of chain nodes only (the command line loads plugins by path)."""
    monkeypatch.delenv("REELGRAPH_PLUGINS", raising=False)
    doc = sweep_doc()
    del doc["nodes"]["div"]
    doc["nodes"]["scale"]["inputs"]["x"] = link("sum.result")
    doc["nodes"]["save"]["type"] = "t.write"
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(doc))
    return path


def test_cli_batch_streams_tagged_events_and_reports_failures(cli_sweep: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "b"
    argv = ["batch", str(cli_sweep), "--grid", "a=1..2", "--grid", "factor=2,0", "--out", str(out),
            "--plugin", TEST_PLUGIN, "--events", "jsonl"]
    assert batch_main(argv) == 3  # one parameter value is refused: that run fails, the rest finish
    captured = capsys.readouterr()
    events = [json.loads(line) for line in captured.out.splitlines()]
    run_ids = [line["run_id"] for line in manifest_lines(out)]
    assert len(run_ids) == 4
    assert {e["run_id"] for e in events if e["event"] == "run_finished"} == set(run_ids)
    assert any(e["event"] == "node_progress" or e["event"] == "node_finished" for e in events)
    assert "batch [####################] 4/4 | 2 done, 2 failed, 0 running" in captured.err
    assert "4 run(s): 2 finished, 2 failed" in captured.err
    assert "invalid_value at node 'scale' input 'factor'" in captured.err

    assert batch_main([*argv[:-2], "--quiet"]) == 3  # resumed: the finished runs are skipped
    captured = capsys.readouterr()
    assert "(2 finished earlier, skipped)" in captured.out and captured.err == ""

    assert batch_main(["batch", str(cli_sweep), "--grid", "a=1..2", "--grid", "factor=2,0", "--out", str(out),
                       "--dry-run"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["run_id"] for r in listed] == run_ids
    assert listed[1]["params"] == {"a": 1, "factor": 0.0}


def test_cli_usage_errors(cli_sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["batch", str(cli_sweep), "--out", str(tmp_path / "b"), "--plugin", TEST_PLUGIN]
    assert batch_main([*base, "--grid", "nope=1"]) == 2
    assert "parameter 'nope' is not declared" in capsys.readouterr().err
    assert batch_main([*base, "--actors", "2"]) == 2
    assert "--actors needs --executor ray" in capsys.readouterr().err
    (tmp_path / "broken.json").write_text("{")
    assert batch_main(["batch", str(tmp_path / "broken.json")]) == 1
    assert not (tmp_path / "b").exists()


def test_ray_executor_without_ray_says_how_to_install(cli_sweep: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from reelgraph.batch_ray import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without the extra looks like
    with pytest.raises(BatchError, match=r"pip install 'reelgraph\[ray\]'"):
        import_ray()
    argv = ["batch", str(cli_sweep), "--executor", "ray", "--out", str(tmp_path / "b"), "--plugin", TEST_PLUGIN]
    assert batch_main(argv) == 2
    assert "pip install 'reelgraph[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "b" / MANIFEST_NAME).exists()


def test_batch_modules_import_neither_ray_nor_torch() -> None:
    code = ("import sys, reelgraph, reelgraph.batch, reelgraph.batch_cli, reelgraph.batch_ray\n"
            "bad = [m for m in ('ray', 'torch') if m in sys.modules]\n"
            "assert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
