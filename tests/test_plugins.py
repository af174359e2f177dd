"""Plugin loading: .py files, modules, env var, installed entry points, failures and name clashes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from reelgraph import Engine

from conftest import ROOT, TEST_PLUGIN, wf

PLUGIN_TEMPLATE = """
from reelgraph import hookimpl, node

@node({name!r}, category="test")
def fn(x: int = 0) -> int:
    return x + {bump}

@hookimpl
def reelgraph_register_nodes(registry):
    registry.add(fn)
"""


def write_plugin(folder: Path, stem: str, body: str) -> str:
    path = folder / f"{stem}.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


def test_plugin_from_py_path(engine: Engine) -> None:
    info = next(p for p in engine.plugins if p.source == TEST_PLUGIN)
    assert info.error is None and "t.add" in info.node_types
    assert engine.registry.get("t.add").plugin == TEST_PLUGIN
    assert next(p.name for p in engine.plugins) == "builtin"


def test_plugin_from_module_name_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_plugin(tmp_path, "mod_plugin", PLUGIN_TEMPLATE.format(name="m.one", bump=1))
    env_file = write_plugin(tmp_path, "env_plugin", PLUGIN_TEMPLATE.format(name="m.two", bump=2))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("REELGRAPH_PLUGINS", env_file + os.pathsep)
    engine = Engine(["mod_plugin"], entry_points=False)
    assert engine.run(wf({"a": {"type": "m.one", "inputs": {"x": 1}},
                          "b": {"type": "m.two", "inputs": {"x": 1}}})).outputs == {"a.result": 2, "b.result": 3}


def test_failing_plugins_are_reported_and_skipped(tmp_path: Path, make_engine: Callable[..., Engine]) -> None:
    broken_import = write_plugin(tmp_path, "broken_import", "import no_such_module_here\n")
    broken_register = write_plugin(tmp_path, "broken_register", """
        from reelgraph import hookimpl, node

        @node("b.half", category="test")
        def half(x: int) -> int:
            return x

        @hookimpl
        def reelgraph_register_nodes(registry):
            registry.add(half)
            raise RuntimeError("cannot find my weights")
    """)
    misspelled = write_plugin(tmp_path, "misspelled", """
        from reelgraph import hookimpl

        @hookimpl
        def reelgraph_register_node(registry):
            pass
    """)
    missing = str(tmp_path / "nope.py")
    engine = make_engine(broken_import, broken_register, misspelled, missing)
    errors = {Path(p.name).stem: p.error for p in engine.plugins if p.error}
    assert set(errors) == {"broken_import", "broken_register", "misspelled", "nope"}
    assert errors["broken_import"].startswith("ModuleNotFoundError: No module named 'no_such_module_here'")
    assert errors["broken_register"].startswith("RuntimeError: cannot find my weights")
    assert "reelgraph_register_node" in errors["misspelled"]
    assert errors["nope"].startswith("FileNotFoundError")
    assert "b.half" not in engine.registry  # withdrawn with its failing plugin
    assert engine.run(wf({"a": {"type": "t.add", "inputs": {"a": 1}}})).outputs == {"a.result": 1}


def test_two_plugins_claiming_one_type(tmp_path: Path, make_engine: Callable[..., Engine]) -> None:
    first = write_plugin(tmp_path, "first", PLUGIN_TEMPLATE.format(name="dup.node", bump=1))
    second = write_plugin(tmp_path, "second", PLUGIN_TEMPLATE.format(name="dup.node", bump=2))
    engine = make_engine(first, second)
    assert engine.registry.conflicts == {"dup.node": [first, second]}
    problems = engine.validate(wf({"x": {"type": "dup.node", "inputs": {}}}))
    assert [(p.code, p.node) for p in problems] == [("node_type_conflict", "x")]
    assert first in problems[0].message and second in problems[0].message
    assert "t.add" in engine.registry


def test_plugins_command_reports_errors_and_conflicts(tmp_path: Path) -> None:
    first = write_plugin(tmp_path, "first", PLUGIN_TEMPLATE.format(name="dup.node", bump=1))
    second = write_plugin(tmp_path, "second", PLUGIN_TEMPLATE.format(name="dup.node", bump=2))
    bad = write_plugin(tmp_path, "bad", "raise ValueError('nope')\n")
    proc = subprocess.run([sys.executable, "-m", "reelgraph", "plugins", "--json", "--plugin", first,
                           "--plugin", second, "--plugin", bad], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    data = json.loads(proc.stdout)
    assert data["conflicts"] == {"dup.node": [first, second]}
    assert [p["error"] for p in data["plugins"] if p["name"] == bad] == ["ValueError: nope (at bad.py:1)"]


def test_plugin_from_installed_entry_point(tmp_path: Path) -> None:
    """Install the example plugin package for real (pip), then find it through its entry point."""
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                          "--no-index", "--target", str(site), str(ROOT / "plugins" / "example")],
                         capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr
    assert list(site.glob("reelgraph_example-*.dist-info"))
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("REELGRAPH_PLUGINS", None)
    proc = subprocess.run([sys.executable, "-m", "reelgraph", "plugins", "--json"], capture_output=True,
                          text=True, env=env, timeout=60)
    plugins = {p["name"]: p for p in json.loads(proc.stdout)["plugins"]}
    assert plugins["example"]["node_types"] == ["example.repeat", "example.word_count"]
    assert plugins["example"]["error"] is None
    doc = tmp_path / "wf.json"
    doc.write_text(json.dumps(wf({"r": {"type": "example.repeat", "inputs": {"text": "go", "times": 3}},
                                  "c": {"type": "example.word_count", "inputs": {"text": {"from": "r.text"}}}})))
    proc = subprocess.run([sys.executable, "-m", "reelgraph", "run", str(doc), "--quiet"], capture_output=True,
                          text=True, env=env, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "c.count = 3"
