"""The command line: exit codes, JSON problem lists, events, diagrams, schema, SIGINT, no raw tracebacks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest

from reelgraph import Engine
from reelgraph.schema import workflow_schema

from conftest import ROOT, TEST_PLUGIN, link, wf


def cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reelgraph", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


def write(path: Path, doc: object) -> str:
    path.write_text(json.dumps(doc))
    return str(path)


def test_validate_json_lists_every_problem_and_exits_1(tmp_path: Path) -> None:
    doc = write(tmp_path / "bad.json", wf({
        "a": {"type": "t.add", "inputs": {"a": "x"}},
        "b": {"type": "t.scale", "inputs": {"x": link("a.nope")}},
    }))
    proc = cli("validate", doc, "--json", "--plugin", TEST_PLUGIN)
    assert proc.returncode == 1
    problems = json.loads(proc.stdout)
    assert [(p["code"], p["node"], p["input"]) for p in problems] == [
        ("invalid_value", "a", "a"), ("dangling_link", "b", "x")]
    assert set(problems[0]) == {"code", "node", "input", "message"}


def test_validate_valid_exits_0(tmp_path: Path) -> None:
    doc = write(tmp_path / "ok.json", wf({"a": {"type": "t.add", "inputs": {"a": 1}}}))
    proc = cli("validate", doc, "--json", "--plugin", TEST_PLUGIN)
    assert (proc.returncode, proc.stdout.strip()) == (0, "[]")


def test_run_with_set_and_jsonl_events(tmp_path: Path) -> None:
    doc = write(tmp_path / "p.json", wf({"s": {"type": "t.steps", "inputs": {"n": {"param": "n"}}}},
                                        params={"n": {"type": "int", "default": 2}}))
    proc = cli("run", doc, "--set", "n=3", "--events", "jsonl", "--quiet", "--plugin", TEST_PLUGIN, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [e["event"] for e in events] == ["run_started", "node_started", "node_progress", "node_progress",
                                            "node_progress", "node_finished", "run_finished"]
    assert events[4]["i"] == 3 and events[4]["n"] == 3 and events[4]["node"] == "s"
    assert "s.result = 3" in proc.stderr


def test_run_failure_exit_3_without_traceback(tmp_path: Path) -> None:
    doc = write(tmp_path / "f.json", wf({"f": {"type": "t.fail", "inputs": {"x": 1, "message": "no frames"}}}))
    proc = cli("run", doc, "--quiet", "--plugin", TEST_PLUGIN, cwd=tmp_path)
    assert proc.returncode == 3
    assert proc.stderr.strip() == (f"error: node_failed: node 'f' (t.fail from plugin {TEST_PLUGIN}): "
                                   "RuntimeError: no frames")
    debug = cli("run", doc, "--quiet", "--debug", "--plugin", TEST_PLUGIN, cwd=tmp_path)
    assert "Traceback" in debug.stderr


@pytest.mark.parametrize("args", [("run", "missing.json"), ("validate", "missing.json"), ("graph", "x.json")])
def test_missing_or_broken_files_give_located_errors_not_tracebacks(tmp_path: Path, args: tuple[str, str]) -> None:
    (tmp_path / "x.json").write_text("{not json")
    proc = cli(*args, cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "bad_format" in proc.stderr + proc.stdout


def test_sigint_stops_cleanly_and_keeps_results(tmp_path: Path) -> None:
    doc = write(tmp_path / "slow.json", wf({"a": {"type": "t.add", "inputs": {"a": 1}},
                                            "s": {"type": "t.steps", "inputs": {"n": 1000, "delay": 0.01}},
                                            "p": {"type": "t.pair", "inputs": {"total": link("a.result")}}}))
    events = tmp_path / "events.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "reelgraph", "run", doc, "--quiet", "--plugin", TEST_PLUGIN,
                             "--cache-dir", str(tmp_path / "cache"), "--events-file", str(events)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.time() + 60
    while time.time() < deadline and (not events.exists() or "node_progress" not in events.read_text()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "interrupted during node 's'" in err and "Traceback" not in err
    lines = [json.loads(x) for x in events.read_text().splitlines()]
    assert lines[-1]["event"] == "run_finished" and lines[-1]["status"] == "interrupted"
    assert max(e.get("i", 0) for e in lines) < 1000
    again = cli("run", doc, "--quiet", "--plugin", TEST_PLUGIN, "--cache-dir", str(tmp_path / "cache"),
                "--output", "p", "--record", "rec.json", cwd=tmp_path)
    assert again.returncode == 0
    assert {n["node"]: n["status"] for n in json.loads((tmp_path / "rec.json").read_text())["nodes"]} == {
        "a": "cached", "p": "ran"}


def test_graph_mermaid_and_dot() -> None:
    proc = cli("graph", str(ROOT / "workflows" / "hello.json"))
    assert proc.stdout.splitlines() == [
        "flowchart LR",
        '    seed["seed<br/><i>seed</i><br/>base=$seed"]',
        '    caption["caption<br/><i>format_text</i><br/>template=$template"]',
        "    seed -->|seed → value| caption",
    ]
    dot = cli("graph", str(ROOT / "workflows" / "hello.json"), "--format", "dot").stdout
    assert '"seed" -> "caption" [label="seed → value"];' in dot and dot.startswith('digraph "hello"')


def test_schema_accepts_shipped_workflows_and_rejects_bad_ones(engine: Engine) -> None:
    proc = cli("schema")
    schema = json.loads(proc.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    for path in sorted((ROOT / "workflows").glob("*.json")):
        jsonschema.validate(json.loads(path.read_text()), schema)
    full = workflow_schema(engine.registry)
    good = wf({"a": {"type": "t.scale", "inputs": {"x": 1, "factor": {"param": "f"}}}})
    jsonschema.validate(good, full)
    for bad in (
        wf({"a": {"type": "t.scale", "inputs": {"x": "text"}}}),
        wf({"a": {"type": "t.scale", "inputs": {"x": 1, "factor": 0}}}),
        wf({"a": {"type": "t.scale", "inputs": {"x": 1, "nope": 1}}}),
        wf({"a": {"type": "t.unknown", "inputs": {}}}),
        wf({"a": {"type": "t.animal_name", "inputs": {"animal": "rex"}}}),
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, full)


def test_node_reference_is_generated_from_code() -> None:
    proc = cli("nodes", "--markdown", env={**os.environ, "REELGRAPH_PLUGINS": ""})
    assert proc.returncode == 0
    assert (ROOT / "docs" / "nodes.md").read_text() == proc.stdout, "regenerate: reelgraph nodes --markdown"


def test_nodes_json_describes_ports() -> None:
    data = json.loads(cli("nodes", "--json", "--plugin", TEST_PLUGIN).stdout)
    scale = next(n for n in data if n["type"] == "t.scale")
    assert scale["inputs"][1] == {"name": "factor", "type": "float", "required": False, "default": "2.0",
                                  "constraints": "Gt(gt=0), Le(le=100)", "link_only": False, "description": ""}
    assert scale["outputs"] == [{"name": "result", "type": "float"}]


def test_skipped_plugins_are_announced_by_every_command(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("raise ImportError('missing dependency: opencv')\n")
    proc = cli("nodes", "--plugin", str(bad))
    assert proc.returncode == 0
    assert f"warning: plugin {bad} was skipped: ImportError: missing dependency: opencv" in proc.stderr
    assert "format_text" in proc.stdout
