"""The diffusion nodes inside the engine: shipped workflows, equality with diffusers, caching, located errors."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reelgraph import Engine, Event, NodeFailed, RunInterrupted, WorkflowInvalid, hookimpl, node
from reelgraph.nodes.values import Conditioning, Latents
from reelgraph.nodes.video_io import read_video

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]
T2V = ROOT / "workflows" / "text2video.json"
EDIT = ROOT / "workflows" / "edit_video.json"
FAST = {"steps": 4, "frames": 4, "model": "builtin:tiny-random"}  # the shipped default is the trained model


@pytest.fixture
def engine(reelgraph_home: Path, make_engine: Callable[..., Engine]) -> Engine:
    """An engine on the session's private builtin:tiny folder."""
    return make_engine()


def test_text2video_equals_diffusers_pipeline(engine: Engine, tiny_dir: Path, tmp_path: Path) -> None:
    from diffusers import TextToVideoSDPipeline

    params = {"model": "builtin:tiny-random", "prompt": "a green square moving up", "negative_prompt": "blurry",
              "seed": 11, "steps": 6, "frames": 8, "guidance_scale": 7.5}
    result = engine.run(T2V, params, outputs=["decode.video"], out_dir=tmp_path)
    ours = result.outputs["decode.video"].frames
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = TextToVideoSDPipeline.from_pretrained(tiny_dir)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(params["prompt"], negative_prompt=params["negative_prompt"], num_frames=8, height=32, width=32,
               num_inference_steps=6, guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(11),
               output_type="pt").frames[0]
    assert ours.shape == ref.shape == (8, 3, 32, 32)
    assert (ours - ref).abs().max().item() <= 1e-4


def test_edit_workflow_is_invert_then_denoise(engine: Engine, tiny: tuple, tmp_path: Path) -> None:
    from reelgraph.nodes import sampling

    result = engine.run(EDIT, FAST, outputs=["invert.noise", "sample.latents", "encode.latents"], out_dir=tmp_path)
    unet, _, text_encoder, scheduler = tiny
    caption = sampling.encode_prompt(text_encoder, "a red circle moving right", "", guidance=True)
    noise = sampling.ddim_invert(unet, scheduler, caption, result.outputs["encode.latents"], steps=4)
    assert torch.equal(noise, result.outputs["invert.noise"].tensor)
    edited = sampling.encode_prompt(text_encoder, "a blue circle moving right", "", guidance=True)
    latents = sampling.denoise(unet, scheduler, edited, steps=4, guidance_scale=5.0, seed=7, scheduler_type="ddim",
                               noise=noise)
    assert torch.equal(latents, result.outputs["sample.latents"].tensor)


@pytest.mark.parametrize("workflow", [T2V, EDIT], ids=["text2video", "edit_video"])
def test_shipped_workflows_run_from_the_cli(workflow: Path, reelgraph_home: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "reelgraph", "run", str(workflow), "--out", str(tmp_path),
                           "--set", "steps=3", "--quiet", "--record", str(tmp_path / "record.json")],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    written = tmp_path / f"{workflow.stem}.mp4"
    lines = proc.stdout.splitlines()
    assert lines[0] == f"save.path = {written}"
    if workflow == EDIT:  # the edited clip's CLIP metrics (builtin:tiny CLIP) follow
        values = dict(line.split(" = ", 1) for line in lines[1:])
        assert list(values) == ["alignment.value", "alignment.per_frame", "alignment.metric", "consistency.value",
                                "consistency.per_pair", "consistency.metric"]
        assert 0 <= float(values["alignment.value"]) <= 100 and -1 <= float(values["consistency.value"]) <= 1
    else:
        assert len(lines) == 1
    video = read_video(written)
    assert (video.num_frames, video.fps, video.height, video.width) == (8, 8.0, 32, 32)
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["params"]["seed"] == 7 and record["status"] == "finished"


def test_same_seed_same_video_across_engines(reelgraph_home: Path, make_engine: Callable[..., Engine],
                                             tmp_path: Path) -> None:
    runs = [make_engine().run(T2V, {**FAST, "seed": 5}, outputs=["decode.video"], out_dir=tmp_path)
            for _ in range(2)]
    a, b = (r.outputs["decode.video"].frames for r in runs)
    assert torch.equal(a, b)
    other = make_engine().run(T2V, {**FAST, "seed": 6}, outputs=["decode.video"], out_dir=tmp_path)
    assert not torch.equal(a, other.outputs["decode.video"].frames)


def test_changing_output_path_reuses_everything_else_across_processes(reelgraph_home: Path, tmp_path: Path) -> None:
    def run(output: str) -> dict[str, str]:
        proc = subprocess.run([sys.executable, "-m", "reelgraph", "run", str(T2V), "--out", str(tmp_path),
                               "--cache-dir", str(tmp_path / "cache"), "--set", "steps=3", "--set",
                               f"output={output}", "--quiet", "--record", str(tmp_path / "rec.json")],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        return {n["node"]: n["status"] for n in json.loads((tmp_path / "rec.json").read_text())["nodes"]}

    assert set(run("a.mp4").values()) == {"ran"}
    # Latents and video persist (safetensors); the model is not even loaded for the second run.
    assert run("b.mp4") == {"decode": "cached", "save": "ran"}
    assert read_video(tmp_path / "b.mp4").num_frames == 8


def test_prompt_change_reruns_only_text_and_after(engine: Engine, tmp_path: Path) -> None:
    engine.run(T2V, FAST, out_dir=tmp_path)
    again = engine.run(T2V, {**FAST, "prompt": "a yellow triangle moving right"}, out_dir=tmp_path)
    assert again.cached == ["model"] and again.ran == ["text", "sample", "decode", "save"]


def test_interrupt_stops_denoising_within_one_step(engine: Engine, tmp_path: Path) -> None:
    ticks: list[tuple[str, int]] = []

    def sink(ev: Event) -> None:
        if ev.event == "node_progress":
            ticks.append((ev.node or "", ev.i or 0))
            if ev.node == "sample" and ev.i == 3:
                engine.interrupt()

    with pytest.raises(RunInterrupted) as info:
        engine.run(T2V, {"steps": 30, "frames": 4}, out_dir=tmp_path, events=[sink])
    assert info.value.node == "sample"
    assert [i for n, i in ticks if n == "sample"] == [1, 2, 3]
    assert info.value.result.ran == ["model", "text"]


def _fails(engine: Engine, workflow: Path | dict[str, Any], params: dict[str, Any], tmp_path: Path) -> Any:
    """The refusal of a run: a failed node, or (for what static checks see) the workflow's one problem."""
    with pytest.raises((NodeFailed, WorkflowInvalid)) as info:
        engine.run(workflow, params, out_dir=tmp_path)
    if isinstance(info.value, WorkflowInvalid):
        (problem,) = info.value.problems
        return problem
    return info.value


def test_bad_model_sources_are_located(engine: Engine, tiny_dir: Path, tmp_path: Path) -> None:
    err = _fails(engine, T2V, {"model": str(tmp_path / "no-such-model")}, tmp_path)
    assert (err.code, err.node, err.input) == ("model_load_failed", "model", "source")
    assert "does not exist" in err.message
    pickled = tmp_path / "pickled"
    import shutil

    shutil.copytree(tiny_dir, pickled)
    for f in (pickled / "unet").glob("*.safetensors"):
        f.rename(f.with_suffix(".bin"))
    err = _fails(engine, T2V, {"model": str(pickled)}, tmp_path)
    assert (err.code, err.node, err.input) == ("model_load_failed", "model", "source")
    assert "pickle" in err.message


def test_bad_videos_are_located(engine: Engine, tmp_path: Path) -> None:
    err = _fails(engine, EDIT, {"source": str(tmp_path / "missing.mp4")}, tmp_path)
    assert (err.code, err.node, err.input) == ("file_not_found", "clip", "path")
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    err = _fails(engine, EDIT, {"source": str(tmp_path / "corrupt.mp4")}, tmp_path)
    assert (err.code, err.node, err.input) == ("video_decode_failed", "clip", "path")


def test_sizes_not_divisible_by_the_vae_factor(engine: Engine, tmp_path: Path) -> None:
    err = _fails(engine, T2V, {"height": 30}, tmp_path)
    assert (err.code, err.node, err.input) == ("invalid_value", "sample", "height")
    assert "VAE factor 4" in err.message
    doc = json.loads(EDIT.read_text())
    doc["nodes"]["clip"]["inputs"]["height"] = 30
    doc["nodes"]["clip"]["inputs"]["width"] = 30
    doc["params"]["source"]["default"] = str(ROOT / "workflows" / "assets" / "red_circle_left.mp4")
    err = _fails(engine, doc, FAST, tmp_path)
    assert (err.code, err.node, err.input) == ("invalid_value", "encode", "video")


def test_validation_catches_bad_literals_before_loading(engine: Engine) -> None:
    problems = engine.validate(T2V, {"steps": 0, "guidance_scale": -1})
    assert [(p.code, p.node, p.input) for p in problems] == [
        ("invalid_value", "sample", "steps"), ("invalid_value", "sample", "guidance_scale")]


def test_too_large_clip_is_refused_before_decoding(engine: Engine, tmp_path: Path) -> None:
    with pytest.raises(NodeFailed) as info:
        engine.run(EDIT, FAST, out_dir=tmp_path, max_memory=10_000)
    err = info.value
    assert (err.code, err.node, err.input) == ("too_large", "clip", "max_frames")
    assert "more than the limit of 9.8 KiB" in err.message
    assert err.result.ran == ["model"]  # the clip was refused before decoding; nothing after it ran


def test_too_large_decode_is_refused_before_allocating(engine: Engine, tmp_path: Path) -> None:
    from reelgraph.nodes.model_loading import load_model

    engine.run(T2V, FAST, outputs=["sample.latents"], out_dir=tmp_path)  # cached: only decode runs below
    with pytest.raises(NodeFailed) as info:
        engine.run(T2V, FAST, outputs=["decode.video"], out_dir=tmp_path, max_memory=20_000)
    err = info.value
    assert (err.code, err.node, err.input) == ("too_large", "decode", "latents")
    assert "decoding 4 frames of 32x32" in err.message
    assert load_model("builtin:tiny-random", device="cpu")  # the shared model is untouched and still loads


def test_too_large_denoise_is_refused_and_context_windows_are_the_way_out(engine: Engine, tmp_path: Path) -> None:
    params = {**FAST, "frames": 64}
    with pytest.raises(NodeFailed) as info:
        engine.run(T2V, params, outputs=["sample.latents"], out_dir=tmp_path, max_memory=4 * 1024**2)
    err = info.value
    assert (err.code, err.node, err.input) == ("too_large", "sample", "frames")
    doc = json.loads(T2V.read_text())
    doc["nodes"]["sample"]["inputs"]["context_frames"] = 8
    doc["params"]["model"]["default"] = "builtin:tiny-random"
    result = engine.run(doc, params, outputs=["sample.latents"], out_dir=tmp_path, max_memory=4 * 1024**2)
    assert result.outputs["sample.latents"].num_frames == 64


@node("test.other_latents", category="test", output="latents")
def _other_latents(channels: int = 3) -> Latents:
    """Latents shaped for a model with another channel count."""
    return Latents(torch.zeros((1, channels, 4, 8, 8)))


@node("test.other_conditioning", category="test", output="conditioning")
def _other_conditioning(width: int = 16) -> Conditioning:
    """Conditioning from a text encoder of another width."""
    return Conditioning(torch.zeros((1, 77, width)), torch.zeros((1, 77, width)))


class _OtherModelPlugin:
    """Registers the two nodes above."""

    @hookimpl
    def reelgraph_register_nodes(self, registry: Any) -> None:
        registry.add(_other_latents)
        registry.add(_other_conditioning)


def test_latents_and_conditioning_from_another_model_are_refused_by_input(
        make_engine: Callable[..., Engine], reelgraph_home: Path, tmp_path: Path) -> None:
    engine = make_engine(_OtherModelPlugin())
    params = {**FAST, "source": str(ROOT / "workflows" / "assets" / "red_circle_right.mp4")}
    doc = json.loads(EDIT.read_text())
    doc["nodes"]["fake"] = {"type": "test.other_latents"}
    doc["nodes"]["sample"]["inputs"]["noise"] = {"from": "fake.latents"}
    err = _fails(engine, doc, params, tmp_path)
    assert (err.code, err.node, err.input) == ("invalid_value", "sample", "noise")
    assert "shape (1, 3, 4, 8, 8); this UNet3D takes [batch, 4, frames, height, width]" in err.message
    doc = json.loads(EDIT.read_text())
    doc["nodes"]["fake"] = {"type": "test.other_conditioning"}
    doc["nodes"]["invert"]["inputs"]["conditioning"] = {"from": "fake.conditioning"}
    err = _fails(engine, doc, params, tmp_path)
    assert (err.code, err.node, err.input) == ("invalid_value", "invert", "conditioning")
    assert "16 wide; this UNet3D cross-attends to 32" in err.message
