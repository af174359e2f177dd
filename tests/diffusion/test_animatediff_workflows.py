"""The shipped AnimateDiff workflows: they run as shipped (CLI, mp4 that decodes), their frames equal diffusers'
AnimateDiff pipelines on the same builtin model and seed, and too many frames per call are refused by input."""

from __future__ import annotations

import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

from reelgraph import Engine, NodeFailed
from reelgraph.nodes.video_io import read_video

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

ROOT = Path(__file__).resolve().parents[2]
T2V = ROOT / "workflows" / "animatediff.json"
CONTROL = ROOT / "workflows" / "animatediff_controlnet.json"


@pytest.fixture
def engine(reelgraph_home: Path, make_engine: Callable[..., Engine]) -> Engine:
    """An engine on the session's private model folders."""
    return make_engine()


def _pipeline(cls, **extra):
    """``cls`` loaded by diffusers itself from the ``builtin:tiny-animatediff`` folder."""
    from reelgraph.nodes.animatediff.tiny import ensure_tiny_animatediff

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = cls.from_pretrained(ensure_tiny_animatediff(), local_files_only=True, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_animatediff_workflow_equals_animatediff_pipeline(engine: Engine, tmp_path: Path) -> None:
    from diffusers import AnimateDiffPipeline

    params = {"prompt": "a green square moving up", "negative_prompt": "blurry", "seed": 11, "steps": 5,
              "frames": 8, "guidance_scale": 7.5}
    ours = engine.run(T2V, params, outputs=["decode.video"], out_dir=tmp_path).outputs["decode.video"].frames
    ref = _pipeline(AnimateDiffPipeline)(
        params["prompt"], negative_prompt=params["negative_prompt"], num_frames=8, height=32, width=32,
        num_inference_steps=5, guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(11),
        output_type="pt").frames[0]
    assert ours.shape == ref.shape == (8, 3, 32, 32)
    diff = (ours - ref).abs().max().item()
    print(f"animatediff.json vs AnimateDiffPipeline: max abs diff {diff:.3g}")
    assert diff <= 1e-4


def test_animatediff_controlnet_workflow_equals_controlnet_pipeline(engine: Engine, tmp_path: Path) -> None:
    from diffusers import AnimateDiffControlNetPipeline, ControlNetModel

    from reelgraph.nodes.animatediff.tiny_controlnet import ensure_tiny_animatediff_controlnet

    params = {"seed": 3, "steps": 5}
    result = engine.run(CONTROL, params, outputs=["decode.video", "edges.video"], out_dir=tmp_path)
    ours, edges = result.outputs["decode.video"].frames, result.outputs["edges.video"].frames
    controlnet = ControlNetModel.from_pretrained(ensure_tiny_animatediff_controlnet(), local_files_only=True)
    ref = _pipeline(AnimateDiffControlNetPipeline, controlnet=controlnet)(
        "a blue ball rolling left", negative_prompt="blurry, low quality", num_frames=8, height=32, width=32,
        num_inference_steps=5, guidance_scale=7.5, conditioning_frames=list(edges),
        generator=torch.Generator("cpu").manual_seed(3), output_type="pt").frames[0]
    assert edges.shape == (8, 3, 32, 32) and float(edges.max()) == 1.0  # real edges steer it
    assert ours.shape == ref.shape == (8, 3, 32, 32)
    diff = (ours - ref).abs().max().item()
    print(f"animatediff_controlnet.json vs AnimateDiffControlNetPipeline: max abs diff {diff:.3g}")
    assert diff <= 1e-4


@pytest.mark.parametrize(("workflow", "frames"), [(T2V, 16), (CONTROL, 8)], ids=["animatediff", "controlnet"])
def test_shipped_animatediff_workflows_run_from_the_cli(workflow: Path, frames: int, reelgraph_home: Path,
                                                       tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "reelgraph", "run", str(workflow), "--out", str(tmp_path),
                           "--set", "steps=3", "--quiet"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    written = tmp_path / f"{workflow.stem}.mp4"
    assert proc.stdout.splitlines() == [f"save.path = {written}"]
    video = read_video(written)
    assert (video.num_frames, video.fps, video.height, video.width) == (frames, 8.0, 32, 32)


def test_more_frames_than_the_motion_modules_take_is_located(engine: Engine, tmp_path: Path) -> None:
    small = {"steps": 1, "height": 16, "width": 16}
    with pytest.raises(NodeFailed) as info:
        engine.run(T2V, {**small, "frames": 40}, out_dir=tmp_path)
    assert (info.value.code, info.value.node, info.value.input) == ("invalid_value", "sample", "frames")
    assert "at most 32 frames per UNet call" in str(info.value) and "context_frames" in str(info.value)
    with pytest.raises(NodeFailed) as info:
        engine.run(T2V, {**small, "frames": 40, "context_frames": 33}, out_dir=tmp_path)
    assert (info.value.code, info.value.node, info.value.input) == ("invalid_value", "sample", "context_frames")
    result = engine.run(T2V, {**small, "frames": 40, "context_frames": 16}, outputs=["sample.latents"],
                        out_dir=tmp_path)
    assert tuple(result.outputs["sample.latents"].tensor.shape) == (1, 4, 40, 8, 8)
