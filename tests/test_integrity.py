"""Every cache hit is true, every output whole: the cases of issue 16 that need no model.

Each test reproduces a fault found on an earlier main: stale side effects served from the cache, keys blind
to code and library versions, damaged or mistyped disk entries used, a full disk failing the run, two
writers losing each other's work, an interrupt lost between threads, wrong output types blamed on the next
node, deep literals crashing, SystemExit in a node, signals leaving partial files.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reelgraph import Engine, Event, NodeFailed, RunContext, RunInterrupted, WorkflowInvalid, hookimpl, node
from reelgraph.cache import DiskCache, node_key

from conftest import TEST_PLUGIN, link, wf

ENV = {**os.environ, "REELGRAPH_PLUGINS": ""}


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reelgraph", *args], cwd=cwd, env=env or ENV, capture_output=True,
                          text=True, timeout=120)


def _write(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


# --- side effects -----------------------------------------------------------------------------------------


def test_a_side_effect_is_a_hit_only_while_its_file_is_unchanged(make_engine: Callable[..., Engine],
                                                                 tmp_path: Path) -> None:
    """``a``, then ``b``, then ``a`` into one file with ``overwrite`` and one cache: the third run must
    write ``a`` again, not return the file that now holds ``b``."""
    cache, out = tmp_path / "cache", tmp_path / "out"

    def run(text: str) -> Any:
        doc = wf({"s": {"type": "t.save_text", "inputs": {"text": text, "path": "same.txt"}}})
        return make_engine(cache_dir=cache).run(doc, out_dir=out, overwrite=True)

    assert run("a").ran == ["s"] and run("b").ran == ["s"]
    third = run("a")
    assert third.ran == ["s"] and (out / "same.txt").read_text() == "a"
    assert run("a").cached == ["s"]  # unchanged since: a true hit


# --- keys follow code and libraries -----------------------------------------------------------------------

PLUGIN_CODE = '''
from reelgraph import hookimpl, node

@node("v.answer", category="test")
def answer(x: int) -> int:
    """A node whose implementation the test edits."""
    return x + {delta}

@hookimpl
def reelgraph_register_nodes(registry):
    registry.add(answer)
'''


def test_a_changed_node_implementation_is_not_served_from_the_cache(tmp_path: Path) -> None:
    plugin = tmp_path / "answer_plugin.py"
    doc = _write(tmp_path / "w.json", wf({"a": {"type": "v.answer", "inputs": {"x": 40}}}))
    args = ("run", str(doc), "--quiet", "--plugin", str(plugin), "--cache-dir", str(tmp_path / "cache"))
    plugin.write_text(PLUGIN_CODE.format(delta=1))
    assert "a.result = 41" in _cli(*args, cwd=tmp_path).stdout
    assert "a.result = 41" in _cli(*args, cwd=tmp_path).stdout
    plugin.write_text(PLUGIN_CODE.format(delta=2))
    assert "a.result = 42" in _cli(*args, cwd=tmp_path).stdout


def test_a_changed_library_version_is_not_served_from_the_cache(tmp_path: Path) -> None:
    """A node declaring ``libraries=("fakelib",)``: the installed version (real distribution metadata on
    ``sys.path``) is part of its key."""
    site = tmp_path / "site"
    (site / "fakelib-1.0.dist-info").mkdir(parents=True)
    (site / "fakelib-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: fakelib\nVersion: 1.0\n")
    (site / "fakelib.py").write_text("VERSION = '1.0'\n")
    plugin = tmp_path / "lib_plugin.py"
    plugin.write_text(textwrap.dedent('''
        import fakelib
        from reelgraph import hookimpl, node

        @node("v.libver", category="test", libraries=("fakelib",))
        def libver(x: int) -> str:
            """Report the library version it computed with."""
            return f"{x}@{fakelib.VERSION}"

        @hookimpl
        def reelgraph_register_nodes(registry):
            registry.add(libver)
    '''))
    doc = _write(tmp_path / "w.json", wf({"a": {"type": "v.libver", "inputs": {"x": 1}}}))
    env = {**ENV, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    args = ("run", str(doc), "--quiet", "--plugin", str(plugin), "--cache-dir", str(tmp_path / "cache"))
    assert "a.result = 1@1.0" in _cli(*args, cwd=tmp_path, env=env).stdout
    (site / "fakelib-1.0.dist-info").rename(site / "fakelib-2.0.dist-info")
    (site / "fakelib-2.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: fakelib\nVersion: 2.0\n")
    (site / "fakelib.py").write_text("VERSION = '2.0'\n")
    assert "a.result = 1@2.0" in _cli(*args, cwd=tmp_path, env=env).stdout


# --- damaged disk entries ---------------------------------------------------------------------------------


def _entry(cache: Path) -> Path:
    (manifest,) = [p for p in cache.rglob("manifest.json")]
    return manifest


def test_a_tampered_or_mistyped_entry_is_a_miss_reported_and_replaced(make_engine: Callable[..., Engine],
                                                                      tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    doc = wf({"a": {"type": "t.add", "inputs": {"a": 1, "b": 2}}})
    assert make_engine(cache_dir=cache).run(doc).outputs["a.result"] == 3
    manifest = _entry(cache)
    # 1. a flipped value, digest left as it was
    manifest.write_text(manifest.read_text().replace('"value": 3', '"value": 4'))
    events: list[Event] = []
    result = make_engine(cache_dir=cache).run(doc, events=[events.append])
    assert result.outputs["a.result"] == 3 and result.ran == ["a"]
    assert [(e.node, e.extra["reason"]) for e in events if e.event == "cache_warning"] == [("a", "corrupt")]
    assert make_engine(cache_dir=cache).run(doc).cached == ["a"]  # replaced by a good entry
    # 2. a manifest that verifies but claims the wrong kind (a string for an int output)
    from reelgraph.cache import _digest_json

    body = json.loads(manifest.read_text())
    body.pop("digest")
    body["outputs"]["result"]["value"] = "three"
    manifest.write_text(json.dumps({**body, "digest": _digest_json(body)}))
    events.clear()
    result = make_engine(cache_dir=cache).run(doc, events=[events.append])
    assert result.outputs["a.result"] == 3 and result.ran == ["a"]
    assert any(e.event == "cache_warning" and "str" in (e.message or "") for e in events)


def test_a_failing_cache_disk_degrades_to_not_cached(tmp_path: Path) -> None:
    """A write past the file size limit (``RLIMIT_FSIZE``: the kernel refuses it as a full disk would) warns and
    the run still finishes, leaving no temporary folder behind."""
    big = "x" * 200_000
    doc = _write(tmp_path / "w.json", wf({"t": {"type": "text", "inputs": {"value": big}},
                                          "n": {"type": "t.add", "inputs": {"a": 1}}}))
    cache, events = tmp_path / "cache", tmp_path / "events.jsonl"

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, 64_000))

    proc = subprocess.run([sys.executable, "-m", "reelgraph", "run", str(doc), "--quiet", "--cache-dir", str(cache),
                           "--events-file", str(events), "--plugin", TEST_PLUGIN], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=120, preexec_fn=limit)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in events.read_text().splitlines()]
    warnings = [e for e in lines if e["event"] == "cache_warning"]
    assert [(e["node"], e["reason"]) for e in warnings] == [("t", "write_failed")]
    assert lines[-1]["event"] == "run_finished" and lines[-1]["status"] == "finished"
    assert not [p for p in cache.rglob(".tmp-*")]
    assert len(list(cache.rglob("manifest.json"))) == 1  # the small result was cached


def test_two_writers_of_one_key_both_succeed(tmp_path: Path) -> None:
    key = node_key("t", 1, {"a": 1}, {})
    barrier, outcomes = threading.Barrier(8), []

    def store(i: int) -> None:
        cache = DiskCache(tmp_path)
        barrier.wait()
        outcomes.append(cache.store(key, {"v": list(range(1000))}).status)
        outcomes.append(cache.store(node_key("t", 1, {"a": i + 2}, {}), {"v": i}).status)

    threads = [threading.Thread(target=store, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(outcomes) <= {"written", "exists"} and outcomes.count("written") >= 9
    cache = DiskCache(tmp_path)
    assert cache.verify() == [] and len(cache.entries()) == 9
    assert cache.get(key, {"v": list[int]}) == {"v": list(range(1000))}


@node("race.save", category="test", side_effects=True, output="path")
def slow_save(text: str, ctx: RunContext, path: str = "race.txt") -> Path:
    """Claim a name, take a while (as encoding a video does), then write."""
    from reelgraph.files import atomic_write_text

    target = ctx.claim_output(path, "path")
    time.sleep(0.3)
    return atomic_write_text(target, text)


class RaceNodes:
    """A plugin object adding ``race.save``."""

    @hookimpl
    def reelgraph_register_nodes(self, registry: Any) -> None:
        registry.add(slow_save)


def test_concurrent_runs_on_one_out_folder_keep_both_outputs(make_engine: Callable[..., Engine],
                                                             tmp_path: Path) -> None:
    """Two runs writing ``race.txt`` at once get two files; a later hit returns the run's own file."""
    engine, out = make_engine(RaceNodes(), cache_dir=tmp_path / "cache"), tmp_path / "out"
    results: dict[str, Path] = {}
    barrier = threading.Barrier(2)

    def run(text: str) -> None:
        barrier.wait()
        doc = wf({"s": {"type": "race.save", "inputs": {"text": text}}})
        results[text] = engine.run(doc, out_dir=out).outputs["s.path"]

    threads = [threading.Thread(target=run, args=(t,)) for t in ("A", "B")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results["A"] != results["B"]
    assert results["A"].read_text() == "A" and results["B"].read_text() == "B"
    again = make_engine(RaceNodes(), cache_dir=tmp_path / "cache").run(
        wf({"s": {"type": "race.save", "inputs": {"text": "A"}}}), out_dir=out)
    assert again.cached == ["s"] and again.outputs["s.path"].read_text() == "A"


def test_an_interrupt_is_not_lost_when_another_run_starts(engine: Engine) -> None:
    slow = wf({"s": {"type": "t.steps", "inputs": {"n": 500, "delay": 0.01}}})
    quick = wf({"q": {"type": "t.steps", "inputs": {"n": 3}}})
    progressed, outcome = threading.Event(), {}

    def first() -> None:
        try:
            engine.run(slow, events=[lambda e: progressed.set() if e.event == "node_progress" else None])
            outcome["first"] = "finished"
        except RunInterrupted:
            outcome["first"] = "interrupted"

    thread = threading.Thread(target=first)
    thread.start()
    assert progressed.wait(30)
    engine.interrupt()
    assert engine.run(quick).outputs["q.result"] == 3  # a run started after the interrupt runs to the end
    thread.join(60)
    assert outcome == {"first": "interrupted"}


# --- located errors ---------------------------------------------------------------------------------------


@node("bad.liar", category="test")
def liar(x: int) -> int:
    """Declares an int, returns text."""
    return f"{x}"  # type: ignore[return-value]


@node("bad.exit", category="test")
def exiter(x: int) -> int:
    """Calls sys.exit."""
    sys.exit(7)


class BadNodes:
    """A plugin object with misbehaving nodes."""

    @hookimpl
    def reelgraph_register_nodes(self, registry: Any) -> None:
        registry.add(liar)
        registry.add(exiter)


def test_a_wrong_output_type_is_blamed_on_the_node_that_returned_it(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(BadNodes())
    with pytest.raises(NodeFailed) as info:
        engine.run(wf({"l": {"type": "bad.liar", "inputs": {"x": 1}},
                       "s": {"type": "t.scale", "inputs": {"x": link("l.result")}}}))
    assert (info.value.code, info.value.node) == ("bad_output", "l")
    assert "'result' is declared int" in info.value.message and "str" in info.value.message


def test_sys_exit_in_a_node_is_a_located_failure(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(BadNodes())
    with pytest.raises(NodeFailed) as info:
        engine.run(wf({"e": {"type": "bad.exit", "inputs": {"x": 1}}}))
    assert (info.value.code, info.value.node) == ("node_failed", "e") and "SystemExit" in info.value.message
    assert engine.run(wf({"a": {"type": "t.add", "inputs": {"a": 1}}})).outputs["a.result"] == 1


def test_deep_literals_are_refused_not_crashed(engine: Engine, tmp_path: Path) -> None:
    deep: Any = 1
    for _ in range(300):
        deep = [deep]
    doc = wf({"f": {"type": "format_text", "inputs": {"template": "x", "values": {"k": deep}}}})
    problems = engine.validate(doc)
    assert [(p.code, p.node, p.input) for p in problems] == [("invalid_value", "f", "values")]
    deeper = tmp_path / "deeper.json"
    deeper.write_text('{"reelgraph": 1, "name": "d", "nodes": {"f": {"type": "text", "inputs": {"value": '
                      + "[" * 6000 + "]" * 6000 + "}}}}")
    proc = _cli("run", str(deeper), "--quiet", cwd=tmp_path)
    assert proc.returncode == 1 and "bad_format" in proc.stderr and "Traceback" not in proc.stderr


class ClashThenFail:
    """A plugin that registers ``text`` (clashing with the built-in one) and then fails."""

    @hookimpl
    def reelgraph_register_nodes(self, registry: Any) -> None:
        @node("text", category="test", output="value")
        def other_text(value: str) -> str:
            """A clashing text node."""
            return value.upper()

        registry.add(other_text)
        raise RuntimeError("broken halfway")


def test_a_plugin_that_clashes_then_fails_leaves_the_builtin_usable(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(ClashThenFail())
    assert any(p.error and "broken halfway" in p.error for p in engine.plugins)
    assert "text" not in engine.registry.conflicts and "text" not in engine.registry.shadowing
    assert engine.run(wf({"t": {"type": "text", "inputs": {"value": "abc"}}})).outputs["t.value"] == "abc"


class TakesText:
    """A plugin that defines ``text``, a built-in name."""

    @hookimpl
    def reelgraph_register_nodes(self, registry: Any) -> None:
        @node("text", category="test", output="value")
        def loud_text(value: str) -> str:
            """Another text node."""
            return value.upper()

        registry.add(loud_text)


def test_a_plugin_cannot_take_over_a_builtin_name(make_engine: Callable[..., Engine]) -> None:
    """Issue 17: a plugin that defines ``text`` used to disable the built-in ``text`` too."""
    engine = make_engine(TakesText())
    assert engine.registry.shadowing == {"text": ["TakesText"]} and "text" not in engine.registry.conflicts
    assert engine.run(wf({"t": {"type": "text", "inputs": {"value": "abc"}}})).outputs["t.value"] == "abc"


def test_set_without_a_value_is_a_usage_error(tmp_path: Path) -> None:
    doc = _write(tmp_path / "w.json", wf({"a": {"type": "t.add", "inputs": {"a": 1}}}))
    proc = _cli("run", str(doc), "--set", "prompt", "--plugin", TEST_PLUGIN, cwd=tmp_path)
    assert proc.returncode == 2 and "NAME=VALUE" in proc.stderr
    proc = _cli("run", str(doc), "--threads", "many", "--plugin", TEST_PLUGIN, cwd=tmp_path)
    assert proc.returncode == 2
    (tmp_path / "afile").write_text("")
    proc = _cli("run", str(doc), "--cache-dir", str(tmp_path / "afile"), "--plugin", TEST_PLUGIN, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


# --- signals and temporaries -------------------------------------------------------------------------------

SLOW_WRITER = '''
import time
from pathlib import Path
from reelgraph import OutputPath, RunContext, hookimpl, node
from reelgraph.files import atomic_path

@node("sig.slow_write", category="test", side_effects=True, output="path")
def slow_write(ctx: RunContext, path: OutputPath = Path("slow.txt"), marker: str = "") -> Path:
    """Write a file slowly inside one atomic write, announcing when it is halfway."""
    target = ctx.claim_output(path, "path")
    with atomic_path(target) as tmp:
        with open(tmp, "w") as f:
            f.write("first half\\n")
            f.flush()
            Path(marker).write_text("writing")
            for _ in range(30):
                time.sleep(0.1)
            f.write("second half\\n")
    return target

@hookimpl
def reelgraph_register_nodes(registry):
    registry.add(slow_write)
'''


def _wait_for(predicate: Callable[[], bool], seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline and not predicate():
        time.sleep(0.02)
    assert predicate()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name)


def _my_run_folders(pid: int) -> list[Path]:
    return list(Path(tempfile.gettempdir()).glob(f"reelgraph-run-{pid}-*"))


def test_sigterm_stops_like_ctrl_c(tmp_path: Path) -> None:
    doc = _write(tmp_path / "slow.json", wf({"s": {"type": "t.steps", "inputs": {"n": 1000, "delay": 0.02}}}))
    events = tmp_path / "events.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "reelgraph", "run", str(doc), "--quiet", "--plugin", TEST_PLUGIN,
                             "--events-file", str(events)], cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: events.exists() and "node_progress" in events.read_text())
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err
    last = json.loads(events.read_text().splitlines()[-1])
    assert (last["event"], last["status"]) == ("run_finished", "interrupted")
    assert not _my_run_folders(proc.pid)


def test_a_second_signal_lets_the_current_write_finish(tmp_path: Path) -> None:
    plugin = tmp_path / "slow_writer.py"
    plugin.write_text(SLOW_WRITER)
    marker, out = tmp_path / "halfway", tmp_path / "out"
    doc = _write(tmp_path / "w.json", wf({"w": {"type": "sig.slow_write", "inputs": {"marker": str(marker)}}}))
    proc = subprocess.Popen([sys.executable, "-m", "reelgraph", "run", str(doc), "--quiet", "--plugin", str(plugin),
                             "--out", str(out)], cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(marker.exists)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert (out / "slow.txt").read_text() == "first half\nsecond half\n"
    assert _leftovers(out) == [] and not _my_run_folders(proc.pid)


def test_temporaries_of_killed_runs_are_swept(make_engine: Callable[..., Engine], tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    out = tmp_path / "out"
    out.mkdir()
    stale = out / f".x.mp4.{dead}-0123abcd.tmp.mp4"
    stale.write_bytes(b"\0" * 1000)
    live = out / f".y.mp4.{os.getpid()}-0123abcd.tmp.mp4"
    live.write_bytes(b"\0")
    folder = Path(tempfile.gettempdir()) / f"reelgraph-run-{dead}-zzzz"
    folder.mkdir(exist_ok=True)
    cache = tmp_path / "cache"
    (cache / "ab" / f".tmp-{dead}-qqqq").mkdir(parents=True)
    make_engine(cache_dir=cache).run(wf({"s": {"type": "t.save_text", "inputs": {"text": "x", "path": "z.txt"}}}),
                                     out_dir=out)
    assert not stale.exists() and live.exists() and not folder.exists()
    assert not (cache / "ab" / f".tmp-{dead}-qqqq").exists()


def test_run_context_is_current_only_inside_a_node(make_engine: Callable[..., Engine]) -> None:
    from reelgraph.context import current_context

    seen: list[Any] = []

    @node("cur.peek", category="test")
    def peek(ctx: RunContext) -> int:
        """Record the current context."""
        seen.append(current_context() is ctx)
        return 1

    class Peek:
        @hookimpl
        def reelgraph_register_nodes(self, registry: Any) -> None:
            registry.add(peek)

    make_engine(Peek()).run(wf({"p": {"type": "cur.peek", "inputs": {}}}))
    assert seen == [True] and current_context() is None


def test_validation_refuses_deep_params(engine: Engine) -> None:
    deep: Any = 0
    for _ in range(100):
        deep = {"k": deep}
    doc = wf({"f": {"type": "format_text", "inputs": {"template": "x", "values": {"param": "v"}}}},
             params={"v": {"type": "json", "default": deep}})
    with pytest.raises(WorkflowInvalid) as info:
        engine.run(doc)
    assert [(p.code, p.input) for p in info.value.problems] == [("invalid_value", "v")]


def test_cache_size_bound_and_the_cache_command(make_engine: Callable[..., Engine], tmp_path: Path) -> None:
    """``cache_size`` keeps the disk cache under its bound, least recently used first; ``reelgraph cache`` reports,
    verifies (finding a flipped byte) and prunes."""
    cache = tmp_path / "cache"
    engine = make_engine(cache_dir=cache, cache_size=30_000)
    for i in range(8):
        engine.run(wf({"t": {"type": "text", "inputs": {"value": f"{i}" * 10_000}}}))
    sizes = DiskCache(cache).entries()
    assert 0 < len(sizes) < 8 and sum(e.nbytes for e in sizes) <= 30_000
    newest = make_engine(cache_dir=cache).run(wf({"t": {"type": "text", "inputs": {"value": "7" * 10_000}}}))
    assert newest.cached == ["t"]
    info = json.loads(_cli("cache", "info", "--cache-dir", str(cache), "--json", cwd=tmp_path).stdout)
    assert info == {"entries": len(sizes), "bytes": sum(e.nbytes for e in sizes)}
    manifest = next(cache.rglob("manifest.json"))
    data = bytearray(manifest.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    manifest.write_bytes(bytes(data))
    verify = _cli("cache", "verify", "--cache-dir", str(cache), "--json", cwd=tmp_path)
    assert verify.returncode == 3 and len(json.loads(verify.stdout)["bad"]) == 1
    repair = _cli("cache", "verify", "--cache-dir", str(cache), "--repair", cwd=tmp_path)
    assert repair.returncode == 0 and len(DiskCache(cache).entries()) == len(sizes) - 1
    pruned = json.loads(_cli("cache", "prune", "--cache-dir", str(cache), "--json", cwd=tmp_path).stdout)
    assert pruned["removed"] == len(sizes) - 1 and DiskCache(cache).entries() == []
