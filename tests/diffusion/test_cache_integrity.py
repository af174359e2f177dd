"""Cache keys see what loaders read, whatever way the path arrives; damaged tensor entries are misses; model
handles count their real size in the memory cache (issue 16)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reelgraph import Engine, Event
from reelgraph.cache import MemoryCache, approx_nbytes

torch = pytest.importorskip("torch")
from safetensors.torch import load_file, save_file  # noqa: E402

from reelgraph.nodes.model_loading import load_model  # noqa: E402
from reelgraph.nodes.tiny_models import ensure_tiny_lora  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "workflows" / "assets"


def _doc(nodes: dict[str, Any]) -> dict[str, Any]:
    return {"reelgraph": 1, "name": "t", "nodes": nodes}


def test_editing_a_linked_lora_file_reruns_the_loader(reelgraph_home: Path, make_engine: Callable[..., Engine],
                                                      tmp_path: Path) -> None:
    lora = tmp_path / "style.safetensors"
    shutil.copyfile(ensure_tiny_lora(), lora)
    doc = tmp_path / "w.json"
    import json

    doc.write_text(json.dumps(_doc({
        "name": {"type": "text", "inputs": {"value": "style.safetensors"}},
        "m": {"type": "load_model", "inputs": {"source": "builtin:tiny-random", "device": "cpu"}},
        "l": {"type": "load_lora", "inputs": {"unet": {"from": "m.unet"}, "text_encoder": {"from": "m.text_encoder"},
                                              "source": {"from": "name.value"}}}})))
    engine = make_engine()
    first = engine.run(doc, outputs=["l.unet"])
    assert "l" in first.ran
    assert "l" in engine.run(doc, outputs=["l.unet"]).cached
    tensors = load_file(str(lora))
    save_file({k: v * 2 for k, v in tensors.items()}, str(lora))
    third = engine.run(doc, outputs=["l.unet"])
    assert "l" in third.ran
    before = dict(first.outputs["l.unet"].module.named_parameters())
    after = dict(third.outputs["l.unet"].module.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)


def test_a_linked_video_path_is_fingerprinted_and_reread(make_engine: Callable[..., Engine], tmp_path: Path) -> None:
    import json

    clip = tmp_path / "clip.mp4"
    shutil.copyfile(ASSETS / "red_circle_right.mp4", clip)
    doc = tmp_path / "w.json"
    doc.write_text(json.dumps(_doc({"name": {"type": "text", "inputs": {"value": "clip.mp4"}},
                                    "v": {"type": "load_video", "inputs": {"path": {"from": "name.value"}}}})))
    engine = make_engine()
    first = engine.run(doc, outputs=["v.video"]).outputs["v.video"]
    assert engine.run(doc, outputs=["v.video"]).cached == ["name", "v"] or "v" in engine.run(doc).cached
    shutil.copyfile(ASSETS / "red_circle_left.mp4", clip)
    again = engine.run(doc, outputs=["v.video"])
    assert "v" in again.ran and not torch.equal(again.outputs["v.video"].frames, first.frames)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_tensor_entry_is_recomputed(make_engine: Callable[..., Engine], tmp_path: Path, damage: str) -> None:
    cache = tmp_path / "cache"
    doc = _doc({"v": {"type": "load_video", "inputs": {"path": str(ASSETS / "red_circle_right.mp4")}}})
    good = make_engine(cache_dir=cache).run(doc, outputs=["v.video"], allow_paths=[ASSETS]).outputs["v.video"]
    (tensors,) = list(cache.rglob("tensors.safetensors"))
    data = bytearray(tensors.read_bytes())
    if damage == "flip":
        data[-100] ^= 0xFF  # inside the frame data: the file still parses
    else:
        data = data[: len(data) // 2]
    tensors.write_bytes(bytes(data))
    events: list[Event] = []
    again = make_engine(cache_dir=cache).run(doc, outputs=["v.video"], allow_paths=[ASSETS], events=[events.append])
    assert again.ran == ["v"] and torch.equal(again.outputs["v.video"].frames, good.frames)
    assert [(e.node, e.extra["reason"]) for e in events if e.event == "cache_warning"] == [("v", "corrupt")]
    assert make_engine(cache_dir=cache).run(doc, outputs=["v.video"], allow_paths=[ASSETS]).cached == ["v"]


def test_model_handles_count_their_parameters_in_the_memory_cache(reelgraph_home: Path) -> None:
    unet = load_model("builtin:tiny-random", device="cpu")[0]
    params = sum(p.numel() * p.element_size() for p in unet.module.parameters())
    assert approx_nbytes(unet) >= params > 100_000
    cache = MemoryCache(max_bytes=int(params * 2.5))
    for i in range(5):
        cache.put(f"k{i}", {"unet": unet if i == 0 else load_model("builtin:tiny-random", device="cpu",
                                                                      dtype="bfloat16")[0]})
    assert len(cache) <= 4 and cache.nbytes <= params * 2.5 + params


def test_thread_count_and_device_are_part_of_the_key(tmp_path: Path) -> None:
    """A persistent cache filled with 2 torch threads is not served to a run with 1 (issue 16: thread count and
    resolved device were not in the key)."""
    import json
    import os
    import subprocess
    import sys

    doc = tmp_path / "w.json"
    doc.write_text(json.dumps(_doc({
        "m": {"type": "load_model", "inputs": {"source": "builtin:tiny-random"}},
        "t": {"type": "clip_text_encode", "inputs": {"text_encoder": {"from": "m.text_encoder"}, "prompt": "a"}}})))
    cache = tmp_path / "cache"

    def run(threads: str) -> dict[str, str]:
        record = tmp_path / f"rec-{threads}.json"
        proc = subprocess.run([sys.executable, "-m", "reelgraph", "run", str(doc), "--quiet", "--cache-dir", str(cache),
                               "--threads", threads, "--output", "t", "--record", str(record)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300, env={**os.environ, "REELGRAPH_PLUGINS": ""})
        assert proc.returncode == 0, proc.stderr
        return {n["node"]: n["status"] for n in json.loads(record.read_text())["nodes"]}

    assert run("2")["t"] == "ran"
    assert run("2")["t"] == "cached"
    assert run("1")["t"] == "ran"


def test_save_video_is_not_a_stale_hit(make_engine: Callable[..., Engine], tmp_path: Path) -> None:
    """The reproduced case: ``save_video`` with overwrite, max_frames 2, then 5, then 2, one cache folder: the
    third run must write 2 frames again (it was a hit, and the file held 5)."""
    from reelgraph.nodes.video_io import read_video

    cache, out = tmp_path / "cache", tmp_path / "out"

    def run(frames: int) -> Any:
        doc = _doc({"v": {"type": "load_video", "inputs": {"path": str(ASSETS / "red_circle_right.mp4"),
                                                           "max_frames": frames}},
                    "s": {"type": "save_video", "inputs": {"video": {"from": "v.video"}, "path": "clip.mp4"}}})
        return make_engine(cache_dir=cache).run(doc, out_dir=out, overwrite=True, allow_paths=[ASSETS])

    run(2)
    run(5)
    third = run(2)
    assert "s" in third.ran and read_video(out / "clip.mp4").num_frames == 2
    assert run(2).cached == ["s"]


def test_editing_a_linked_model_folder_reloads_it(reelgraph_home: Path, make_engine: Callable[..., Engine],
                                                  tmp_path: Path) -> None:
    """``load_model`` fed its folder by link fingerprints that folder (it used to fingerprint its default)."""
    import json

    from reelgraph.nodes.tiny_models import builtin_model

    folder = tmp_path / "my-model"
    shutil.copytree(builtin_model("builtin:tiny-random"), folder)
    doc = tmp_path / "w.json"
    doc.write_text(json.dumps(_doc({"name": {"type": "text", "inputs": {"value": "my-model"}},
                                    "m": {"type": "load_model", "inputs": {"source": {"from": "name.value"},
                                                                           "device": "cpu"}}})))
    engine = make_engine()
    assert "m" in engine.run(doc, outputs=["m.unet"]).ran
    assert "m" in engine.run(doc, outputs=["m.unet"]).cached
    config = folder / "scheduler" / "scheduler_config.json"
    settings = json.loads(config.read_text())
    settings["steps_offset"] = 0 if settings.get("steps_offset") else 1
    config.write_text(json.dumps(settings))
    assert "m" in engine.run(doc, outputs=["m.unet"]).ran
