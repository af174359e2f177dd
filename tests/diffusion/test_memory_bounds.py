"""Issue 16, bounded resources: nodes that used to bypass --max-memory refuse (``too_large``, naming the node and
the input) before allocating; steps=1000, the documented maximum, runs for every sampler and for the inversion."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reelgraph import Engine, NodeFailed, hookimpl, node
from reelgraph.nodes.values import Latents, UNet3D, Video

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]
T2V = ROOT / "workflows" / "text2video.json"
MB = 1024**2


@node("mb.video", category="test", output="video")
def _video(frames: int = 4, height: int = 64, width: int = 64) -> Video:
    """A grey clip of this size."""
    return Video(torch.full((frames, 3, height, width), 0.5), fps=8.0)


@node("mb.latents", category="test", output="latents")
def _latents(frames: int = 4, height: int = 8, width: int = 8) -> Latents:
    """Zero latents for the builtin tiny model (4 channels)."""
    return Latents(torch.zeros((1, 4, frames, height, width)))


class _Sources:
    @hookimpl
    def reelgraph_register_nodes(self, registry: Any) -> None:
        registry.add(_video)
        registry.add(_latents)


@pytest.fixture
def engine(reelgraph_home: Path, make_engine: Callable[..., Engine]) -> Engine:
    return make_engine(_Sources())


def _video_doc(step: dict[str, Any], **size: int) -> dict[str, Any]:
    return {"reelgraph": 1, "name": "bounds", "nodes": {
        "src": {"type": "mb.video", "inputs": size},
        "step": {**step, "inputs": {"video": {"from": "src.video"}, **step["inputs"]}}}}


def _refusal(engine: Engine, doc: dict[str, Any], tmp_path: Path, limit: int) -> NodeFailed:
    with pytest.raises(NodeFailed) as info:
        engine.run(doc, out_dir=tmp_path, max_memory=limit)
    assert "more than the limit" in info.value.message
    return info.value


# --- the shared helper ---------------------------------------------------------------------------------------


def test_check_tensor_memory_counts_shape_dtype_copies_and_extra() -> None:
    from reelgraph.memory import check_tensor_memory, tensor_nbytes

    asked: list[tuple[int, str, str | None]] = []

    class Ctx:
        def check_memory(self, nbytes: int, what: str, input: str | None = None) -> None:
            asked.append((nbytes, what, input))

    assert tensor_nbytes((4096, 4, 2048, 2048), 4) == 274_877_906_944  # exact: no float or int32 overflow
    assert tensor_nbytes((2, 3), torch.float16) == 12
    assert check_tensor_memory(Ctx(), (2, 3, 4), 4, "x", "frames", copies=3, extra=5) == 2 * 3 * 4 * 4 * 3 + 5
    assert asked == [(293, "x", "frames")]


# --- pixel-space nodes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("inputs", "refused_input"), [({"factor": 16}, "factor"), ({"height": 1024}, "height"),
                                                       ({"width": 1024}, "width")])
def test_upscale_video_is_bounded(engine: Engine, tmp_path: Path, inputs: dict[str, Any],
                                  refused_input: str) -> None:
    doc = _video_doc({"type": "upscale_video", "inputs": inputs})
    err = _refusal(engine, doc, tmp_path, 20 * MB)  # 4 frames of 1024x1024 float32 are 48 MiB
    assert (err.code, err.node, err.input) == ("too_large", "step", refused_input)
    assert "resizing 4 frames to 1024x1024" in err.message
    small = _video_doc({"type": "upscale_video", "inputs": {"factor": 2}})
    assert engine.run(small, out_dir=tmp_path, max_memory=20 * MB).outputs["step.video"].frames.shape == (4, 3, 128,
                                                                                                        128)


@pytest.mark.parametrize(("height", "width", "refused_input"), [(2048, 1024, "height"), (1024, 2048, "width")])
def test_resize_video_is_bounded(engine: Engine, tmp_path: Path, height: int, width: int, refused_input: str) -> None:
    doc = _video_doc({"type": "resize_video", "inputs": {"height": height, "width": width}})
    err = _refusal(engine, doc, tmp_path, 50 * MB)  # 4 frames of 2048x1024 float32 are 96 MiB, twice over
    assert (err.code, err.node, err.input) == ("too_large", "step", refused_input)
    ok = _video_doc({"type": "resize_video", "inputs": {"height": 96, "width": 80}})
    assert engine.run(ok, out_dir=tmp_path, max_memory=50 * MB).outputs["step.video"].frames.shape == (4, 3, 96, 80)


@pytest.mark.parametrize("method", ["blend", "flow"])
def test_interpolate_frames_is_bounded(engine: Engine, tmp_path: Path, method: str) -> None:
    pytest.importorskip("cv2")
    doc = _video_doc({"type": "interpolate_frames", "inputs": {"multiplier": 64, "method": method}})
    err = _refusal(engine, doc, tmp_path, 5 * MB)  # 193 frames of 64x64 float32 are 9 MiB
    assert (err.code, err.node, err.input) == ("too_large", "step", "multiplier")
    assert "interpolating 193 frames of 64x64" in err.message
    ok = _video_doc({"type": "interpolate_frames", "inputs": {"multiplier": 2, "method": method}}, frames=2)
    assert engine.run(ok, out_dir=tmp_path, max_memory=5 * MB).outputs["step.video"].num_frames == 3


# --- context windows: the whole clip counts, not only the window -----------------------------------------------


def _t2v(context_frames: int | None) -> dict[str, Any]:
    doc = json.loads(T2V.read_text())
    doc["params"]["model"]["default"] = "builtin:tiny-random"
    if context_frames is not None:
        doc["nodes"]["sample"]["inputs"].update(context_frames=context_frames, context_overlap=0)
    return doc


def test_denoise_with_one_frame_windows_counts_the_whole_clip(engine: Engine, tmp_path: Path) -> None:
    # 256 frames of 16x16 latents: the one-frame windows' activations are 0.5 MiB, the clip's latents 8 MiB
    params = {"frames": 256, "height": 64, "width": 64, "steps": 1}
    with pytest.raises(NodeFailed) as info:
        engine.run(_t2v(1), params, outputs=["sample.latents"], out_dir=tmp_path, max_memory=4 * MB)
    err = info.value
    assert (err.code, err.node, err.input) == ("too_large", "sample", "frames")
    assert "denoising 256 frames of 16x16 latents in windows of 1" in err.message
    assert err.result.ran == ["model", "text"]  # refused before drawing the noise


def test_denoise_of_the_largest_clip_with_one_frame_windows_is_refused(engine: Engine, tmp_path: Path) -> None:
    # the reported case: 4096 frames of 8192x8192 pixels in 1-frame windows asked for 275 GB of latents
    params = {"frames": 4096, "height": 8192, "width": 8192, "steps": 1}
    with pytest.raises(NodeFailed) as info:
        engine.run(_t2v(1), params, outputs=["sample.latents"], out_dir=tmp_path, max_memory=16 * 1024**3)
    err = info.value
    assert (err.code, err.node, err.input) == ("too_large", "sample", "frames")
    assert "denoising 4096 frames of 2048x2048 latents" in err.message


def test_ddim_invert_with_one_frame_windows_is_bounded(engine: Engine, tmp_path: Path) -> None:
    doc = {"reelgraph": 1, "name": "invert", "nodes": {
        "model": {"type": "load_model", "inputs": {"source": "builtin:tiny-random"}},
        "text": {"type": "clip_text_encode", "inputs": {"text_encoder": {"from": "model.text_encoder"},
                                                        "prompt": "a red circle"}},
        "clean": {"type": "mb.latents", "inputs": {"frames": 256, "height": 16, "width": 16}},
        "invert": {"type": "ddim_invert", "inputs": {
            "unet": {"from": "model.unet"}, "scheduler": {"from": "model.scheduler"},
            "conditioning": {"from": "text.conditioning"}, "latents": {"from": "clean.latents"}, "steps": 1,
            "context_frames": 1, "context_overlap": 0}}}}
    with pytest.raises(NodeFailed) as info:
        engine.run(doc, out_dir=tmp_path, max_memory=4 * MB)
    err = info.value
    assert (err.code, err.node, err.input) == ("too_large", "invert", "latents")
    doc["nodes"]["clean"]["inputs"]["frames"] = 4
    assert engine.run(doc, out_dir=tmp_path, max_memory=4 * MB).outputs["invert.noise"].num_frames == 4


# --- steps=1000 --------------------------------------------------------------------------------------------------


class _EchoUNet(torch.nn.Module):
    """Stands in for the tiny UNet3D (same config) at a fraction of the cost: predicts ``0.1 * x`` and records
    every timestep it is evaluated at. A thousand real evaluations would take about 11 s per sampler here."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[float] = []

    def forward(self, sample: torch.Tensor, t: Any, encoder_hidden_states: Any = None, **kwargs: Any) -> tuple:
        self.seen.append(float(t))
        return (0.1 * sample,)


@pytest.fixture
def echo(tiny: tuple) -> tuple[Callable[[], UNet3D], Any, Any]:
    from reelgraph.nodes import sampling

    unet, _, text_encoder, scheduler = tiny

    def fresh() -> UNet3D:
        return UNet3D(_EchoUNet(unet.module.config), unet.source, unet.vae_scale_factor)

    return fresh, scheduler, sampling.encode_prompt(text_encoder, "a red circle", guidance=False)


@pytest.mark.parametrize("scheduler_type", [None, "ddim", "dpm++", "euler"])
def test_steps_1000_run_for_every_sampler(echo: tuple, scheduler_type: str | None) -> None:
    from reelgraph.nodes import sampling

    fresh, scheduler, cond = echo
    unet = fresh()
    done: list[int] = []
    x = sampling.denoise(unet, scheduler, cond, frames=1, height=8, width=8, steps=1000, guidance_scale=1.0,
                         scheduler_type=scheduler_type, progress=lambda i, n: done.append(n))
    assert len(done) == 1000 and set(done) == {1000}
    seen = unet.module.seen
    assert len(seen) == 1000 and len(set(seen)) == 1000  # every training timestep once, none past the end
    assert seen[0] == 999 and seen[-1] == 0 and seen == sorted(seen, reverse=True)
    assert bool(torch.isfinite(x).all())


def test_steps_1000_run_for_ddim_inversion(echo: tuple) -> None:
    from reelgraph.nodes import sampling

    fresh, scheduler, cond = echo
    unet = fresh()
    noise = sampling.ddim_invert(unet, scheduler, cond, torch.randn(1, 4, 1, 2, 2), steps=1000)
    assert unet.module.seen == [float(t) for t in range(1000)]
    assert bool(torch.isfinite(noise).all())


@pytest.mark.parametrize("scheduler_type", [None, "dpm++", "euler"])
def test_steps_below_the_maximum_keep_the_schedulers_own_timesteps(tiny: tuple, scheduler_type: str | None) -> None:
    from reelgraph.nodes.sampling import prepare_timesteps

    scheduler = tiny[3]
    for steps in (1, 25, 500, 998):
        reference = scheduler.create(scheduler_type)
        reference.set_timesteps(steps)
        prepared = prepare_timesteps(scheduler.create(scheduler_type), steps)
        assert torch.equal(prepared.timesteps, reference.timesteps), steps  # still equal to the pipelines
