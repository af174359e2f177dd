"""A workflow from a stranger reads and writes nothing outside the allowed folders, however its paths arrive.

Each test here reproduces a hole found on an earlier main (issue 15): paths arriving by link skipped the
sandbox, a report wrote through a linked folder, batch runs and ``--overwrite`` replaced files they had no
business replacing, and refusals told whether a path existed.
"""

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

from reelgraph import Engine, NodeFailed
from reelgraph.batch import BatchJob, LocalExecutor, plan_batch, run_batch
from reelgraph.paths import Sandbox

from conftest import link, wf


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    """``flows/`` (the workflow's folder), ``out/``, and ``elsewhere/`` outside every root."""
    made = {n: tmp_path / n for n in ("flows", "out", "elsewhere")}
    for p in made.values():
        p.mkdir()
    (made["flows"] / "in.txt").write_text("inside")
    (made["elsewhere"] / "secret.txt").write_text("secret")
    return made


def _write(folder: Path, doc: dict[str, Any], name: str = "wf.json") -> Path:
    path = folder / name
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


# --- 1. a write outside every root through a linked folder ---------------------------------------------


def test_report_never_copies_through_a_linked_assets_folder(tmp_path: Path) -> None:
    """The reproduced exploit: ``sub/report_files`` links to a victim folder; the report copies a payload."""
    flows, victim = tmp_path / "workflows", tmp_path / "victim"
    (flows / "payload").mkdir(parents=True)
    (flows / "sub").mkdir()
    victim.mkdir()
    (flows / "payload" / "authorized_keys").write_text("ssh-ed25519 AAAA attacker")
    (flows / "sub" / "report_files").symlink_to(victim, target_is_directory=True)
    doc = _write(flows, {"reelgraph": 1, "name": "bundle", "nodes": {"r": {"type": "write_report", "inputs": {
        "path": "../workflows/sub/report.html", "video_1": "payload/authorized_keys"}}}})
    env = {**os.environ, "REELGRAPH_PLUGINS": ""}
    proc = subprocess.run([sys.executable, "-m", "reelgraph", "run", str(doc), "--quiet"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "path_not_allowed" in proc.stderr + proc.stdout
    assert list(victim.iterdir()) == []
    assert not (flows / "sub" / "report.html").exists() and not (flows / "sub" / "report.json").exists()


# --- 3. paths that arrive by link -----------------------------------------------------------------------

LOADERS = [("load_model", "source"), ("load_lora", "source"), ("load_controlnet", "source"), ("load_clip", "source"),
           ("load_video", "path"), ("t.read_file", "path"), ("t.read_path", "path")]


def _linked(node_type: str, input_name: str, value: str) -> dict[str, Any]:
    nodes: dict[str, Any] = {"src": {"type": "text", "inputs": {"value": value}},
                             "use": {"type": node_type, "inputs": {input_name: link("src.value")}}}
    if node_type == "load_lora":
        nodes["m"] = {"type": "load_model", "inputs": {}}
        nodes["use"]["inputs"].update({"unet": link("m.unet"), "text_encoder": link("m.text_encoder")})
    return wf(nodes)


@pytest.mark.parametrize(("node_type", "input_name"), LOADERS)
def test_linked_paths_outside_the_roots_are_refused_alike(make_engine: Callable[..., Engine], tree: dict[str, Path],
                                                          node_type: str, input_name: str) -> None:
    """A ``text`` output linked into any loader is sandboxed; the refusal reads the same whether the path
    exists or not (no file-existence oracle)."""
    engine = make_engine()
    messages = []
    for name in ("secret.txt", "missing.txt"):
        value = str(tree["elsewhere"] / name)
        doc = _write(tree["flows"], _linked(node_type, input_name, value))
        with pytest.raises(NodeFailed) as info:
            engine.run(doc, out_dir=tree["out"], outputs=["use"])
        assert (info.value.code, info.value.node, info.value.input) == ("path_not_allowed", "use", input_name)
        messages.append(info.value.message.replace(name, "NAME"))
    assert messages[0] == messages[1]


def test_linked_relative_paths_resolve_against_the_workflow_folder(make_engine: Callable[..., Engine],
                                                                   tree: dict[str, Path], tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "in.txt").write_text("the current folder's")
    monkeypatch.chdir(cwd)
    doc = _write(tree["flows"], _linked("t.read_file", "path", "in.txt"))
    assert make_engine().run(doc, out_dir=tree["out"]).outputs["use.result"] == "inside"


def test_a_text_output_feeds_a_path_input(make_engine: Callable[..., Engine], tree: dict[str, Path]) -> None:
    """``format_text`` -> an ``InputPath`` input (a sweep over clips): validates, converts, sandboxes."""
    engine = make_engine()
    doc = _write(tree["flows"], wf({
        "name": {"type": "format_text", "inputs": {"template": "{value}.txt", "value": "in"}},
        "read": {"type": "t.read_path", "inputs": {"path": link("name.text")}}}))
    assert engine.validate(doc, out_dir=tree["out"]) == []
    assert engine.run(doc, out_dir=tree["out"]).outputs["read.result"] == "inside"
    bad = _write(tree["flows"], wf({
        "name": {"type": "format_text", "inputs": {"template": "../elsewhere/{value}.txt", "value": "secret"}},
        "read": {"type": "t.read_path", "inputs": {"path": link("name.text")}}}), "bad.json")
    with pytest.raises(NodeFailed) as info:
        engine.run(bad, out_dir=tree["out"])
    assert (info.value.code, info.value.node, info.value.input) == ("path_not_allowed", "read", "path")


def test_containers_of_paths_are_checked(make_engine: Callable[..., Engine], tree: dict[str, Path]) -> None:
    engine = make_engine()
    secret = str(tree["elsewhere"] / "secret.txt")
    literal = _write(tree["flows"], wf({"r": {"type": "t.read_many", "inputs": {
        "paths": ["in.txt", secret], "named": {"a": "in.txt", "b": secret}, "pair": [secret, "x"]}}}))
    problems = engine.validate(literal, out_dir=tree["out"])
    assert sorted((p.code, p.node, p.input) for p in problems) == [
        ("path_not_allowed", "r", "named"), ("path_not_allowed", "r", "pair"), ("path_not_allowed", "r", "paths")]
    good = _write(tree["flows"], wf({"r": {"type": "t.read_many", "inputs": {
        "paths": ["in.txt"], "named": {"a": "in.txt"}, "pair": ["in.txt", "x"]}}}), "good.json")
    assert engine.run(good, out_dir=tree["out"]).outputs["r.result"] == "inside|a=inside|x:inside"
    linked = _write(tree["flows"], wf({
        "names": {"type": "t.lines", "inputs": {"text": f"in.txt\n{secret}"}},
        "r": {"type": "t.read_many", "inputs": {"paths": link("names.result")}}}), "linked.json")
    with pytest.raises(NodeFailed) as info:
        engine.run(linked, out_dir=tree["out"])
    assert (info.value.code, info.value.node, info.value.input) == ("path_not_allowed", "r", "paths")


def test_refusals_never_show_where_a_link_points(make_engine: Callable[..., Engine], tree: dict[str, Path]) -> None:
    (tree["flows"] / "link.txt").symlink_to(tree["elsewhere"] / "secret.txt")
    (tree["flows"] / "dangling.txt").symlink_to(tree["elsewhere"] / "nothing.txt")
    engine = make_engine()
    for name in ("link.txt", "dangling.txt"):
        doc = _write(tree["flows"], wf({"r": {"type": "t.read_path", "inputs": {"path": name}}}))
        (problem,) = engine.validate(doc, out_dir=tree["out"])
        assert problem.code == "path_not_allowed"
        assert "elsewhere" not in problem.message and "secret" not in problem.message


# --- outputs: never through a link, never over an input, batch stays in its folder ----------------------


def test_an_output_never_writes_through_a_symlink(make_engine: Callable[..., Engine], tree: dict[str, Path]) -> None:
    target = tree["flows"] / "precious.txt"
    target.write_text("precious")
    (tree["out"] / "x.txt").symlink_to(target)
    doc = _write(tree["flows"], wf({"s": {"type": "t.save_text", "inputs": {"text": "new", "path": "x.txt"}}}))
    written = make_engine().run(doc, out_dir=tree["out"], overwrite=True).outputs["s.path"]
    assert target.read_text() == "precious"
    assert written == tree["out"] / "x-1.txt" and written.read_text() == "new"


def test_report_twin_never_replaces_the_workflow_file(make_engine: Callable[..., Engine],
                                                      tree: dict[str, Path]) -> None:
    """``eval.html``'s JSON twin would be ``eval.json``: the workflow itself, even under ``overwrite``."""
    doc = wf({"r": {"type": "write_report", "inputs": {"path": str(tree["flows"] / "eval.html")}}})
    path = _write(tree["flows"], doc, "eval.json")
    before = path.read_bytes()
    result = make_engine().run(path, out_dir=tree["out"], overwrite=True)
    assert path.read_bytes() == before
    assert (result.outputs["r.html"].name, result.outputs["r.json"].name) == ("eval-1.html", "eval-1.json")


def test_an_output_never_replaces_an_input_of_the_run(make_engine: Callable[..., Engine],
                                                      tree: dict[str, Path]) -> None:
    doc = _write(tree["flows"], wf({
        "r": {"type": "t.read_path", "inputs": {"path": "in.txt"}},
        "s": {"type": "t.save_text", "inputs": {"text": link("r.result"), "path": str(tree["flows"] / "in.txt")}}}))
    written = make_engine().run(doc, out_dir=tree["out"], overwrite=True).outputs["s.path"]
    assert (tree["flows"] / "in.txt").read_text() == "inside" and written.name == "in-1.txt"


def test_batch_never_replaces_files_outside_its_folder(make_engine: Callable[..., Engine], tree: dict[str, Path],
                                                       tmp_path: Path) -> None:
    notes = tree["flows"] / "notes.html"
    notes.write_text("my notes")
    doc = _write(tree["flows"], wf({
        "s": {"type": "t.save_text", "inputs": {"text": "batch", "path": str(notes)}},
        "own": {"type": "t.save_text", "inputs": {"text": "mine", "path": "own.txt"}}}))
    batch = tmp_path / "batch"
    runs = plan_batch(doc, batch)
    executor = LocalExecutor(make_engine())
    first = run_batch(BatchJob(str(doc)), runs, batch, executor)
    assert notes.read_text() == "my notes"
    written = Path(next(iter(first.outcomes.values())).outputs["s.path"])
    assert written.parent == tree["flows"] and written.read_text() == "batch"
    # A forced re-run replaces the run's own files inside its folder (no own-1.txt there).
    again = run_batch(BatchJob(str(doc)), runs, batch, executor, force=True)
    own = Path(next(iter(again.outcomes.values())).outputs["own.path"])
    assert own.name == "own.txt" and sorted(p.name for p in own.parent.iterdir()) == ["own.txt"]


def test_concurrent_claims_get_distinct_names(tree: dict[str, Path]) -> None:
    """Two writers claiming ``race.mp4`` at the same moment: each gets its own name."""
    from reelgraph.outputs import OutputWriter

    writer = OutputWriter(Sandbox(tree["flows"], tree["out"]))
    barrier, claimed = threading.Barrier(8), []

    def claim() -> None:
        barrier.wait()
        claimed.append(writer.claim("race.mp4").path)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(claimed)) == 8
    assert {p.name for p in claimed} == {"race.mp4", *(f"race-{i}.mp4" for i in range(1, 8))}


def test_given_params_are_the_users_intent_unless_untrusted(make_engine: Callable[..., Engine], tree: dict[str, Path],
                                                            tmp_path: Path) -> None:
    """``--set src=...`` resolves against the current folder and is allowed; a server passing a remote client's
    values (``trust_params=False``) keeps them sandboxed like the workflow's own."""
    doc = _write(tree["flows"], wf({"r": {"type": "t.read_path", "inputs": {"path": {"param": "src"}}}},
                                   params={"src": {"type": "str", "default": "in.txt"}}))
    secret = str(tree["elsewhere"] / "secret.txt")
    engine = make_engine()
    assert engine.run(doc, {"src": secret}, out_dir=tree["out"]).outputs["r.result"] == "secret"
    problems = engine.validate(doc, {"src": secret}, out_dir=tree["out"], trust_params=False)
    assert [(p.code, p.node, p.input) for p in problems] == [("path_not_allowed", "r", "path")]
    env = {**os.environ, "REELGRAPH_PLUGINS": ""}
    from conftest import TEST_PLUGIN

    proc = subprocess.run([sys.executable, "-m", "reelgraph", "run", str(doc), "--set", "src=secret.txt", "--quiet",
                           "--out", str(tree["out"]), "--plugin", TEST_PLUGIN], cwd=tree["elsewhere"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "r.result = secret" in proc.stdout
