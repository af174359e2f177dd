"""Execution: only needed nodes run, the cache re-runs exactly what changed, failures and interrupts keep work."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from reelgraph import Engine, Event, NodeFailed, RunContext, RunInterrupted, hookimpl, node
from reelgraph.cache import DiskCache, MemoryCache, node_key

from conftest import TEST_PLUGIN, link, wf


def chain(fourth: int = 4) -> dict[str, Any]:
    """A 5-node chain: n1 -> n2 -> n3 -> n4 -> n5, each adding its own literal."""
    return wf({
        "n1": {"type": "t.add", "inputs": {"a": 1}},
        "n2": {"type": "t.add", "inputs": {"a": link("n1.result"), "b": 2}},
        "n3": {"type": "t.add", "inputs": {"a": link("n2.result"), "b": 3}},
        "n4": {"type": "t.add", "inputs": {"a": link("n3.result"), "b": fourth}},
        "n5": {"type": "t.add", "inputs": {"a": link("n4.result"), "b": 5}},
    })


def test_outputs_and_named_tuple_outputs(engine: Engine) -> None:
    doc = wf({"a": {"type": "t.add", "inputs": {"a": 2, "b": 3}},
              "p": {"type": "t.pair", "inputs": {"total": link("a.result"), "label": "sum"}}})
    result = engine.run(doc)
    assert result.outputs == {"p.total": 5, "p.label": "sum=5"}
    assert result.ran == ["a", "p"]


def test_runs_only_what_requested_outputs_need(engine: Engine, calls: list[str]) -> None:
    doc = wf({"a": {"type": "t.add", "inputs": {"a": 2}},
              "unused": {"type": "t.scale", "inputs": {"x": 1.0}},
              "p": {"type": "t.pair", "inputs": {"total": link("a.result")}}})
    result = engine.run(doc, outputs=["p.label"])
    assert result.outputs == {"p.label": "n=2"}
    assert list(result.records) == ["a", "p"]
    assert calls == ["t.add", "t.pair"]


def test_partial_reexecution_in_process(engine: Engine, calls: list[str]) -> None:
    first = engine.run(chain(4))
    assert first.ran == ["n1", "n2", "n3", "n4", "n5"]
    assert first.outputs == {"n5.result": 15}
    second = engine.run(chain(40))
    assert second.ran == ["n4", "n5"]
    assert second.cached == ["n3"]  # n1 and n2 are not even needed: n3's result is cached
    assert list(second.records) == ["n3", "n4", "n5"]
    assert second.outputs == {"n5.result": 51}
    third = engine.run(chain(40))
    assert third.ran == [] and third.cached == ["n5"] and third.outputs == {"n5.result": 51}
    assert len(calls) == 7


def test_cache_keys_ignore_node_ids(engine: Engine) -> None:
    engine.run(wf({"x": {"type": "t.add", "inputs": {"a": 1, "b": 2}}}))
    renamed = engine.run(wf({"renamed": {"type": "t.add", "inputs": {"a": 1, "b": 2}}}))
    assert renamed.cached == ["renamed"]


def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reelgraph", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_partial_reexecution_across_processes(tmp_path: Path) -> None:
    for fourth, name in ((4, "one.json"), (40, "two.json")):
        (tmp_path / name).write_text(json.dumps(chain(fourth)))
    cache = tmp_path / "cache"
    statuses = []
    for name in ("one.json", "two.json"):
        proc = _run_cli("run", name, "--cache-dir", str(cache), "--plugin", TEST_PLUGIN, "--record",
                        f"{name}.record", "--quiet", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        record = json.loads((tmp_path / f"{name}.record").read_text())
        statuses.append({n["node"]: n["status"] for n in record["nodes"]})
    assert statuses[0] == dict.fromkeys(["n1", "n2", "n3", "n4", "n5"], "ran")
    assert statuses[1] == {"n3": "cached", "n4": "ran", "n5": "ran"}
    assert "n5.result = 51" in proc.stdout


def test_failure_names_node_and_keeps_finished_results(engine: Engine, calls: list[str]) -> None:
    doc = wf({"a": {"type": "t.add", "inputs": {"a": 1}},
              "f": {"type": "t.fail", "inputs": {"x": link("a.result"), "message": "bad frame"}}})
    events: list[Event] = []
    with pytest.raises(NodeFailed) as info:
        engine.run(doc, events=[events.append])
    err = info.value
    assert (err.node, err.node_type, err.message) == ("f", "t.fail", "RuntimeError: bad frame")
    assert err.result.ran == ["a"] and err.result.status == "failed"
    assert [e.event for e in events] == ["run_started", "node_started", "node_finished", "node_started",
                                         "node_failed", "run_finished"]
    fixed = wf({"a": {"type": "t.add", "inputs": {"a": 1}},
                "s": {"type": "t.scale", "inputs": {"x": link("a.result")}}})
    assert engine.run(fixed).cached == ["a"]


def test_events_sequence_with_progress(engine: Engine) -> None:
    events: list[Event] = []
    engine.run(wf({"s": {"type": "t.steps", "inputs": {"n": 3}}}), events=[events.append])
    kinds = [(e.event, e.i, e.n) for e in events]
    assert kinds == [("run_started", None, None), ("node_started", None, None), ("node_progress", 1, 3),
                     ("node_progress", 2, 3), ("node_progress", 3, 3), ("node_finished", None, None),
                     ("run_finished", None, None)]
    assert events[-2].seconds is not None and events[-2].seconds >= 0
    events.clear()
    engine.run(wf({"s": {"type": "t.steps", "inputs": {"n": 3}}}), events=[events.append])
    assert [e.event for e in events] == ["run_started", "node_cached", "run_finished"]


def test_interrupt_stops_within_a_step_and_keeps_finished_results(engine: Engine) -> None:
    doc = wf({"a": {"type": "t.add", "inputs": {"a": 1}},
              "s": {"type": "t.steps", "inputs": {"n": 1000, "delay": 0.001}},
              "p": {"type": "t.pair", "inputs": {"total": link("a.result")}}})
    ticks: list[int] = []

    def sink(ev: Event) -> None:
        if ev.event == "node_progress":
            ticks.append(ev.i or 0)
            if ev.i == 5:
                engine.interrupt()

    with pytest.raises(RunInterrupted) as info:
        engine.run(doc, events=[sink])
    assert ticks == [1, 2, 3, 4, 5]
    assert info.value.node == "s" and info.value.result.status == "interrupted"
    assert info.value.result.ran == ["a"]
    again = engine.run(wf({"a": {"type": "t.add", "inputs": {"a": 1}}}))
    assert again.cached == ["a"]


def test_interrupt_from_another_thread(engine: Engine) -> None:
    doc = wf({"s": {"type": "t.steps", "inputs": {"n": 1000, "delay": 0.002}}})
    started = threading.Event()
    timer = threading.Thread(target=lambda: (started.wait(5), engine.interrupt()))
    timer.start()
    with pytest.raises(RunInterrupted):
        engine.run(doc, events=[lambda e: started.set() if e.event == "node_progress" else None])
    timer.join()


def test_side_effect_node_reruns_when_its_file_is_missing(engine: Engine, tmp_path: Path,
                                                          calls: list[str]) -> None:
    doc = wf({"w": {"type": "t.write", "inputs": {"text": "hi", "path": "a/b.txt"}}})
    first = engine.run(doc, out_dir=tmp_path)
    target = first.outputs["w.path"]
    assert target == tmp_path / "a" / "b.txt" and target.read_text() == "hi"
    assert engine.run(doc, out_dir=tmp_path).cached == ["w"]
    target.unlink()
    assert engine.run(doc, out_dir=tmp_path).ran == ["w"]
    assert target.exists()
    assert engine.run(doc, out_dir=tmp_path / "elsewhere").ran == ["w"]


def test_side_effect_nodes_never_share_results(engine: Engine, tmp_path: Path) -> None:
    doc = wf({"w1": {"type": "t.write", "inputs": {"text": "hi", "path": "x.txt"}},
              "w2": {"type": "t.write", "inputs": {"text": "hi", "path": "x.txt"}}})
    assert engine.run(doc, out_dir=tmp_path).ran == ["w1", "w2"]


def test_upstream_of_cached_nodes_is_skipped(engine: Engine, calls: list[str]) -> None:
    doc = wf({"a": {"type": "t.add", "inputs": {"a": 1}},
              "p": {"type": "t.pair", "inputs": {"total": link("a.result")}},
              "s": {"type": "t.scale", "inputs": {"x": link("a.result"), "factor": 3}}})
    engine.run(doc)
    calls.clear()
    doc["nodes"]["s"]["inputs"]["factor"] = 4
    result = engine.run(doc)
    assert result.ran == ["s"] and result.cached == ["a", "p"]
    assert calls == ["t.scale"]


def test_fingerprint_invalidates_when_a_read_file_changes(make_engine: Any, tmp_path: Path) -> None:
    reads: list[str] = []

    def file_state(values: dict[str, Any], ctx: RunContext) -> Any:
        stat = ctx.resolve_input(values["path"]).stat()
        return [stat.st_size, stat.st_mtime_ns]

    @node("t.read", fingerprint=file_state)
    def read(path: str, ctx: RunContext) -> str:
        reads.append(path)
        return ctx.resolve_input(path).read_text()

    class Plugin:
        @hookimpl
        def reelgraph_register_nodes(self, registry: Any) -> None:
            registry.add(read)

    engine = make_engine(Plugin())
    (tmp_path / "in.txt").write_text("one")
    doc = tmp_path / "wf.json"
    doc.write_text(json.dumps(wf({"r": {"type": "t.read", "inputs": {"path": "in.txt"}}})))
    assert engine.run(doc).outputs == {"r.result": "one"}
    assert engine.run(doc).cached == ["r"]
    (tmp_path / "in.txt").write_text("three")
    assert engine.run(doc).outputs == {"r.result": "three"}
    assert reads == ["in.txt", "in.txt"]
    (tmp_path / "in.txt").unlink()
    with pytest.raises(NodeFailed) as info:
        engine.run(doc)
    assert info.value.node == "r" and info.value.message.startswith("FileNotFoundError")


def test_params_override_and_rerun(engine: Engine) -> None:
    doc = wf({"a": {"type": "t.add", "inputs": {"a": {"param": "n"}, "b": 1}}},
             params={"n": {"type": "int", "default": 1}})
    assert engine.run(doc).outputs == {"a.result": 2}
    result = engine.run(doc, params={"n": 10})
    assert result.outputs == {"a.result": 11} and result.ran == ["a"]
    assert result.params == {"n": 10}


def test_memory_cache_respects_byte_budget() -> None:
    cache = MemoryCache(max_bytes=3000)
    for i in range(10):
        cache.put(f"k{i}", {"v": b"x" * 1000})
    assert len(cache) == 2 and cache.nbytes <= 3000
    assert cache.get("k9") is not None and cache.get("k0") is None


def test_disk_cache_roundtrip_json_and_paths(tmp_path: Path) -> None:
    disk = DiskCache(tmp_path)
    key = node_key("t.x", 1, {"a": 1}, {})
    assert disk.put(key, {"n": 3, "s": [1, "a", None], "p": Path("/tmp/x")})
    assert disk.get(key, {}) == {"n": 3, "s": [1, "a", None], "p": Path("/tmp/x")}
    assert not disk.put(node_key("t.x", 1, {"a": 2}, {}), {"obj": object()})
    assert disk.get(node_key("t.x", 1, {"a": 2}, {}), {}) is None
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.rglob("*"))


def test_disk_cache_tensors_via_safetensors(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    disk = DiskCache(tmp_path)
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    assert disk.put("ab" * 32, {"t": t})
    files = {p.name for p in tmp_path.rglob("*") if p.is_file()}
    assert files == {"manifest.json", "tensors.safetensors"}
    assert torch.equal(disk.get("ab" * 32, {})["t"], t)


def test_cache_key_depends_on_literal_version_and_upstream() -> None:
    base = node_key("t", 1, {"a": 1}, {"x": ("k", "out")})
    assert base == node_key("t", 1, {"a": 1}, {"x": ("k", "out")})
    assert base != node_key("t", 2, {"a": 1}, {"x": ("k", "out")})
    assert base != node_key("t", 1, {"a": 2}, {"x": ("k", "out")})
    assert base != node_key("t", 1, {"a": 1}, {"x": ("k2", "out")})
    assert base != node_key("t", 1, {"a": 1}, {"x": ("k", "other")})
    assert node_key("t", 1, {"f": float("nan")}, {}) == node_key("t", 1, {"f": float("nan")}, {})
