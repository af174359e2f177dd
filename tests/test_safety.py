"""Safety by default: pickles never run, one weight reader, plugin failures are isolated, writes are atomic."""

from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Any

import pytest

from reelgraph import Engine, NodeFailed
from reelgraph.files import atomic_path, atomic_write_text

from conftest import ROOT, link, wf


class Payload:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_planted_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from reelgraph.nodes.weights import UnsafeWeightsError, load_state_dict

    marker = tmp_path / "pwned"
    evil = tmp_path / "lora.bin"
    torch.save({"weight": Payload(marker)}, evil)
    with pytest.raises(UnsafeWeightsError, match="refused"):
        load_state_dict(evil)
    assert not marker.exists()
    plain = tmp_path / "ok.pt"
    torch.save({"w": torch.ones(2)}, plain)
    assert torch.equal(load_state_dict(plain)["w"], torch.ones(2))
    with pytest.raises(UnsafeWeightsError):
        load_state_dict(plain, allow_pickle=False)


def test_model_folder_with_a_planted_pickle_is_refused(tmp_path: Path, make_engine: Any) -> None:
    torch = pytest.importorskip("torch")
    marker = tmp_path / "pwned"
    folder = tmp_path / "model"
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        (folder / part).mkdir(parents=True)
    (folder / "model_index.json").write_text(
        '{"unet": ["diffusers", "UNet3DConditionModel"], "vae": ["diffusers", "AutoencoderKL"], '
        '"text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"], '
        '"scheduler": ["diffusers", "DDIMScheduler"]}')
    for part in ("unet", "vae", "text_encoder"):
        torch.save({"w": Payload(marker)}, folder / part / "diffusion_pytorch_model.bin")
    doc = wf({"m": {"type": "load_model", "inputs": {"source": str(folder)}}})
    with pytest.raises(NodeFailed) as info:
        make_engine().run(doc, out_dir=tmp_path)
    assert (info.value.code, info.value.node, info.value.input) == ("model_load_failed", "m", "source")
    assert "pickle" in info.value.message and not marker.exists()


def _unpickling_sites(path: Path) -> list[str]:
    """Calls of torch.load / pickle loading, and imports of pickle-like modules, found in the code (not strings)."""
    sites = []
    for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(n, ast.Import | ast.ImportFrom):
            names = [a.name for a in n.names] + ([n.module] if isinstance(n, ast.ImportFrom) and n.module else [])
            sites += [f"import {m}" for m in names if m.split(".")[0] in ("pickle", "dill", "cloudpickle", "joblib")]
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in ("load", "loads"):
            owner = n.func.value
            if isinstance(owner, ast.Name) and owner.id in ("torch", "pickle"):
                keywords = {k.arg: ast.unparse(k.value) for k in n.keywords}
                sites.append(f"{owner.id}.{n.func.attr}(weights_only={keywords.get('weights_only')})")
    return sites


def test_only_the_weights_module_may_unpickle() -> None:
    found = {}
    for folder in ("core", "nodes", "plugins", "tools", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            sites = _unpickling_sites(path)
            if sites:
                found[path.relative_to(ROOT).as_posix()] = sites
    assert found == {"nodes/weights.py": ["torch.load(weights_only=True)", "torch.load(weights_only=True)"]}


def test_a_failing_plugin_node_is_named_and_others_keep_working(tmp_path: Path, make_engine: Any) -> None:
    plugin = tmp_path / "flaky_plugin.py"
    plugin.write_text(
        "from reelgraph import hookimpl, node\n\n"
        "@node('flaky.divide')\n"
        "def divide(x: int) -> float:\n"
        "    return 1 / x\n\n"
        "@hookimpl\n"
        "def reelgraph_register_nodes(registry):\n"
        "    registry.add(divide)\n")
    engine = make_engine(str(plugin))
    doc = wf({"a": {"type": "t.add", "inputs": {"a": 0}},
              "d": {"type": "flaky.divide", "inputs": {"x": link("a.result")}}})
    with pytest.raises(NodeFailed) as info:
        engine.run(doc)
    assert info.value.plugin == str(plugin)
    assert str(info.value) == (f"node_failed: node 'd' (flaky.divide from plugin {plugin}): "
                               "ZeroDivisionError: division by zero")
    assert engine.run(wf({"a": {"type": "t.add", "inputs": {"a": 0}}, "b": {"type": "t.add",
                                                                            "inputs": {"a": link("a.result")}}})
                      ).outputs == {"b.result": 0}


def test_atomic_writes_leave_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []
    atomic_write_text(target, "whole")
    assert target.read_text() == "whole" and [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_interrupted_video_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        make_engine: Any) -> None:
    pytest.importorskip("torch")
    monkeypatch.setenv("REELGRAPH_HOME", str(tmp_path.parent / "reelgraph-home"))
    from reelgraph import Event, RunInterrupted

    engine: Engine = make_engine()
    doc = ROOT / "workflows" / "text2video.json"

    def sink(ev: Event) -> None:
        if ev.event == "node_progress" and ev.node == "save" and ev.i == 2:
            engine.interrupt()

    with pytest.raises(RunInterrupted) as info:
        engine.run(doc, {"steps": 2, "frames": 8}, out_dir=tmp_path, events=[sink])
    assert info.value.node == "save"
    assert list(tmp_path.iterdir()) == []
    again = engine.run(doc, {"steps": 2, "frames": 8}, out_dir=tmp_path)
    assert again.ran == ["save"] and [p.name for p in tmp_path.iterdir()] == ["text2video.mp4"]
