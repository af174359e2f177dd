"""The path sandbox: workflow paths stay inside allowed roots; outputs never clobber existing files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from reelgraph import NodeFailed, WorkflowInvalid

from conftest import TEST_PLUGIN, wf


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    names = ("flows", "out", "elsewhere")
    made = {n: tmp_path / n for n in names}
    for p in made.values():
        p.mkdir()
    (made["flows"] / "in.txt").write_text("inside")
    (made["elsewhere"] / "secret.txt").write_text("secret")
    (made["flows"] / "link.txt").symlink_to(made["elsewhere"] / "secret.txt")
    return made


def write_wf(folder: Path, nodes: dict[str, Any]) -> Path:
    path = folder / "wf.json"
    path.write_text(json.dumps(wf(nodes)))
    return path


@pytest.mark.parametrize("bad", ["../elsewhere/secret.txt", "link.txt", "{elsewhere}/secret.txt", "/etc/passwd"])
def test_inputs_outside_the_roots_are_refused(make_engine: Any, folders: dict[str, Path], bad: str) -> None:
    engine = make_engine()
    doc = write_wf(folders["flows"], {"r": {"type": "t.read_file",
                                             "inputs": {"path": bad.format(elsewhere=folders["elsewhere"])}}})
    problems = engine.validate(doc, out_dir=folders["out"])
    assert [(p.code, p.node, p.input) for p in problems] == [("path_not_allowed", "r", "path")]
    with pytest.raises(WorkflowInvalid):
        engine.run(doc, out_dir=folders["out"])


def test_inputs_inside_the_roots_and_allowed_folders(make_engine: Any, folders: dict[str, Path]) -> None:
    engine = make_engine()
    doc = write_wf(folders["flows"], {"a": {"type": "t.read_file", "inputs": {"path": "in.txt"}},
                                      "b": {"type": "t.read_file", "inputs": {"path": "mem:builtin"}},
                                      "c": {"type": "t.read_file",
                                            "inputs": {"path": str(folders["elsewhere"] / "secret.txt")}}})
    assert engine.validate(doc, out_dir=folders["out"])[0].node == "c"
    result = engine.run(doc, out_dir=folders["out"], allow_paths=[folders["elsewhere"]])
    assert result.outputs == {"a.result": "inside", "b.result": "builtin", "c.result": "secret"}


def test_outputs_resolve_under_out_and_never_clobber(make_engine: Any, folders: dict[str, Path]) -> None:
    engine = make_engine()
    doc = write_wf(folders["flows"], {"s": {"type": "t.save_text", "inputs": {"text": "one", "path": "sub/x.txt"}}})
    first = engine.run(doc, out_dir=folders["out"]).outputs["s.path"]
    assert first == folders["out"] / "sub" / "x.txt" and first.read_text() == "one"
    doc2 = write_wf(folders["flows"], {"s": {"type": "t.save_text", "inputs": {"text": "two", "path": "sub/x.txt"}}})
    second = engine.run(doc2, out_dir=folders["out"]).outputs["s.path"]
    assert second == folders["out"] / "sub" / "x-1.txt" and first.read_text() == "one"
    doc3 = write_wf(folders["flows"], {"s": {"type": "t.save_text", "inputs": {"text": "3", "path": "sub/x.txt"}}})
    third = engine.run(doc3, out_dir=folders["out"], overwrite=True).outputs["s.path"]
    assert third == first and first.read_text() == "3"


@pytest.mark.parametrize("bad", ["../escape.txt", "/tmp/escape.txt"])
def test_outputs_outside_the_roots_are_refused(make_engine: Any, folders: dict[str, Path], bad: str) -> None:
    engine = make_engine()
    doc = write_wf(folders["flows"], {"s": {"type": "t.save_text", "inputs": {"text": "x", "path": bad}}})
    problems = engine.validate(doc, out_dir=folders["out"])
    assert [(p.code, p.node, p.input) for p in problems] == [("path_not_allowed", "s", "path")]


def test_paths_computed_at_run_time_are_sandboxed_too(make_engine: Any, folders: dict[str, Path]) -> None:
    engine = make_engine()
    doc = write_wf(folders["flows"], {"s": {"type": "t.save_anywhere", "inputs": {"text": "x", "where": "../x.txt"}}})
    with pytest.raises(NodeFailed) as info:
        engine.run(doc, out_dir=folders["out"])
    assert (info.value.code, info.value.node, info.value.input) == ("path_not_allowed", "s", "where")
    assert not (folders["out"].parent / "x.txt").exists()


def test_params_carrying_paths_are_checked(make_engine: Any, folders: dict[str, Path],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A parameter's default is the workflow's (sandboxed); a value the caller gives is the user's own intent:
    relative to the current folder, and allowed wherever it points (issue 17's trust model)."""
    engine = make_engine()
    doc = folders["flows"] / "p.json"
    doc.write_text(json.dumps(wf({"r": {"type": "t.read_file", "inputs": {"path": {"param": "src"}}}},
                                 params={"src": {"type": "str", "default": "in.txt"}})))
    assert engine.validate(doc, out_dir=folders["out"]) == []
    bad = folders["flows"] / "bad.json"
    bad.write_text(json.dumps(wf({"r": {"type": "t.read_file", "inputs": {"path": {"param": "src"}}}},
                                 params={"src": {"type": "str", "default": "../elsewhere/secret.txt"}})))
    problems = engine.validate(bad, out_dir=folders["out"])
    assert [(p.code, p.node, p.input) for p in problems] == [("path_not_allowed", "r", "path")]
    monkeypatch.chdir(folders["elsewhere"])
    assert engine.validate(doc, {"src": "secret.txt"}, out_dir=folders["out"]) == []
    assert engine.run(doc, {"src": "secret.txt"}, out_dir=folders["out"]).outputs["r.result"] == "secret"


def test_cli_allow_path_and_overwrite(folders: dict[str, Path]) -> None:
    doc = folders["flows"] / "w.json"
    doc.write_text(json.dumps(wf({"w": {"type": "t.write", "inputs": {"text": "x", "path": "a.txt"}},
                                  "r": {"type": "t.read_file", "inputs": {"path": "../elsewhere/secret.txt"}}})))
    env = {**os.environ, "REELGRAPH_PLUGINS": ""}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "reelgraph", *args, "--plugin", TEST_PLUGIN], env=env,
                              capture_output=True, text=True, timeout=60, cwd=folders["flows"])

    refused = cli("validate", str(doc), "--out", str(folders["out"]), "--json")
    assert refused.returncode == 1
    assert [(p["code"], p["node"], p["input"]) for p in json.loads(refused.stdout)] == [
        ("path_not_allowed", "r", "path")]
    allowed = cli("run", str(doc), "--out", str(folders["out"]), "--allow-path", str(folders["elsewhere"]),
                  "--quiet")
    assert allowed.returncode == 0, allowed.stderr
    assert "r.result = secret" in allowed.stdout and (folders["out"] / "a.txt").read_text() == "x"
