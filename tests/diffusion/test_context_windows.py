"""Temporal context windows: the window schedule, the fuse weights, exactness with one window, windowed runs of
long clips (with ControlNet controls sliced per window), the nodes' inputs and the long_video workflow."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reelgraph import Engine, NodeFailed
from reelgraph.nodes.context_windows import ContextWindowError, context_windows, fuse_predictions, fuse_weights

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from reelgraph.nodes import sampling  # noqa: E402
from reelgraph.nodes.values import Conditioning, Control, UNet3D  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
LONG = ROOT / "workflows" / "long_video.json"
SIZE, GUIDANCE = 16, 7.5


@pytest.fixture(scope="module")
def cond(tiny: tuple) -> Conditioning:
    """Text conditioning with negatives, for guidance."""
    return sampling.encode_prompt(tiny[2], "a red circle moving left", "blurry", guidance=True)


def unet_frame_counts(unet: UNet3D, fn: Callable[[], Any]) -> tuple[Any, list[int]]:
    """``fn()``'s result and the number of frames of every UNet3D call it made (a forward pre-hook)."""
    seen: list[int] = []
    handle = unet.module.register_forward_pre_hook(lambda module, args: seen.append(int(args[0].shape[2])))
    try:
        return fn(), seen
    finally:
        handle.remove()


# ------------------------------------------------------------------------------------------- the schedule


@pytest.mark.parametrize(("frames", "context", "overlap"), [
    (24, 8, 4), (25, 8, 4), (10, 4, 1), (11, 4, 1), (16, 6, 0), (9, 8, 7), (100, 16, 4), (5, 1, 0), (17, 16, 2)])
def test_windows_cover_every_frame_overlap_and_end_at_the_last_frame(frames: int, context: int, overlap: int) -> None:
    windows = context_windows(frames, context, overlap)
    assert windows[0][0] == 0 and windows[-1][1] == frames  # the last window is aligned to the end
    assert all(stop - start == context for start, stop in windows)  # every window has full length
    covered = [0] * frames
    for start, stop in windows:
        for f in range(start, stop):
            covered[f] += 1
    assert min(covered) >= 1
    for (a0, a1), (b0, b1) in itertools.pairwise(windows):
        assert a0 < b0 < a1 <= b1 or (overlap == 0 and b0 == a1)  # ordered, no window inside another
        assert a1 - b0 >= overlap  # neighbours share at least the overlap
    stride = context - overlap
    assert [s for s, _ in windows[:-1]] == list(range(0, stride * (len(windows) - 1), stride))


def test_window_schedule_examples_and_single_window() -> None:
    assert context_windows(24, 8, 4) == [(0, 8), (4, 12), (8, 16), (12, 20), (16, 24)]
    assert context_windows(11, 4, 1) == [(0, 4), (3, 7), (6, 10), (7, 11)]
    for context in (None, 8, 9, 100):
        assert context_windows(8, context, 4) == [(0, 8)]


def test_impossible_settings_name_their_input() -> None:
    for kwargs, where in [({"context_frames": 4, "overlap": 4}, "context_overlap"),
                          ({"context_frames": 4, "overlap": -1}, "context_overlap"),
                          ({"context_frames": 0, "overlap": 0}, "context_frames"),
                          ({"context_frames": 4, "overlap": 1, "fuse": "gauss"}, "context_fuse")]:
        with pytest.raises(ContextWindowError) as info:
            context_windows(16, **kwargs)
        assert info.value.input == where


def test_fuse_weights_and_weighted_average() -> None:
    assert fuse_weights(8, "pyramid").tolist() == [1, 2, 3, 4, 4, 3, 2, 1]
    assert fuse_weights(5, "pyramid").tolist() == [1, 2, 3, 2, 1]
    assert fuse_weights(3, "flat").tolist() == [1, 1, 1]
    windows = [(0, 4), (2, 6)]

    def const(index: int, start: int, stop: int) -> Any:
        return torch.full((1, 2, stop - start, 3, 3), float(10 * (index + 1)))  # window 0: 10, window 1: 20

    flat = fuse_predictions(const, windows, "flat")[0, 0, :, 0, 0].tolist()
    assert flat == [10, 10, 15, 15, 20, 20]
    pyramid = fuse_predictions(const, windows, "pyramid")[0, 0, :, 0, 0]
    # frame 2 is at weight 2 in window 0 ([1, 2, 2, 1]) and 1 in window 1; frame 3 the other way round
    assert torch.allclose(pyramid, torch.tensor([10, 10, 40 / 3, 50 / 3, 20, 20]))
    with pytest.raises(ValueError, match="cover"):
        fuse_predictions(const, [(0, 2), (3, 5)], "flat")


# ------------------------------------------------------------------------------------------------ exactness


def test_windows_as_long_as_the_clip_are_exactly_the_windowless_run(tiny: tuple, cond: Conditioning) -> None:
    unet, _, _, scheduler = tiny
    run = {"frames": 6, "height": SIZE, "width": SIZE, "steps": 3, "guidance_scale": GUIDANCE, "seed": 4}
    plain = sampling.denoise(unet, scheduler, cond, **run)
    for context in (6, 7, 64):
        for fuse in ("flat", "pyramid"):
            windowed = sampling.denoise(unet, scheduler, cond, **run, context_frames=context, context_overlap=2,
                                        context_fuse=fuse)
            assert torch.equal(windowed, plain)
    latents = torch.randn(1, 4, 6, SIZE // 4, SIZE // 4, generator=torch.Generator().manual_seed(1))
    v2v = {"latents": latents, "steps": 4, "strength": 0.5, "guidance_scale": GUIDANCE, "seed": 2,
           "scheduler_type": "euler"}
    assert torch.equal(sampling.denoise(unet, scheduler, cond, **v2v, context_frames=6),
                       sampling.denoise(unet, scheduler, cond, **v2v))
    inverted = sampling.ddim_invert(unet, scheduler, cond, latents, steps=3, guidance_scale=GUIDANCE)
    assert torch.equal(sampling.ddim_invert(unet, scheduler, cond, latents, steps=3, guidance_scale=GUIDANCE,
                                            context_frames=6, context_overlap=5), inverted)


def test_disjoint_windows_equal_denoising_each_window_alone(tiny: tuple, cond: Conditioning) -> None:
    """With no overlap each frame's prediction is its window's, and DDIM steps frames independently."""
    unet, _, _, scheduler = tiny
    noise = torch.randn(1, 4, 12, SIZE // 4, SIZE // 4, generator=torch.Generator().manual_seed(5))
    run = {"steps": 3, "guidance_scale": GUIDANCE, "scheduler_type": "ddim"}
    windowed = sampling.denoise(unet, scheduler, cond, noise=noise, **run, context_frames=4, context_overlap=0)
    alone = torch.cat([sampling.denoise(unet, scheduler, cond, noise=noise[:, :, s:s + 4].contiguous(), **run)
                       for s in (0, 4, 8)], dim=2)
    diff = (windowed - alone).abs().max().item()
    print(f"disjoint windows vs each window alone: max abs diff {diff:.3g}")
    assert diff <= 1e-6
    inverted = sampling.ddim_invert(unet, scheduler, cond, noise, steps=2, context_frames=6, context_overlap=0)
    alone = torch.cat([sampling.ddim_invert(unet, scheduler, cond, noise[:, :, s:s + 6].contiguous(), steps=2)
                       for s in (0, 6)], dim=2)
    assert (inverted - alone).abs().max().item() <= 1e-6


def test_controls_are_sliced_to_each_window(tiny: tuple, cond: Conditioning) -> None:
    from reelgraph.nodes.controlnet import ControlError, clear_controlnet_cache, load_controlnet

    unet, _, _, scheduler = tiny
    cn = load_controlnet("builtin:tiny", device="cpu")
    try:
        images = torch.rand(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(6))
        noise = torch.randn(1, 4, 8, SIZE // 4, SIZE // 4, generator=torch.Generator().manual_seed(7))
        run = {"steps": 2, "guidance_scale": GUIDANCE, "scheduler_type": "ddim"}

        def controlled(frames: Any) -> Conditioning:
            return cond.with_control(Control(cn, frames, scale=0.9))

        windowed = sampling.denoise(unet, scheduler, controlled(images), noise=noise, **run, context_frames=4,
                                    context_overlap=0)
        alone = torch.cat([sampling.denoise(unet, scheduler, controlled(images[s:s + 4]),
                                            noise=noise[:, :, s:s + 4].contiguous(), **run) for s in (0, 4)], dim=2)
        assert (windowed - alone).abs().max().item() <= 1e-6
        plain = sampling.denoise(unet, scheduler, cond, noise=noise, **run, context_frames=4, context_overlap=0)
        assert (windowed - plain).abs().max().item() > 1e-3  # the controls acted
        one = images[:1]  # a single control frame serves every window
        overlapping = {"context_frames": 4, "context_overlap": 2}
        assert torch.equal(
            sampling.denoise(unet, scheduler, controlled(one), noise=noise, **run, **overlapping),
            sampling.denoise(unet, scheduler, controlled(one.repeat(8, 1, 1, 1)), noise=noise, **run, **overlapping))
        with pytest.raises(ControlError, match="3 control frames for a 8-frame video"):
            sampling.denoise(unet, scheduler, controlled(images[:3]), noise=noise, **run, **overlapping)
    finally:
        clear_controlnet_cache()


# ------------------------------------------------------------------------------------------ long clips


def test_windowed_run_of_three_windows_length_completes(tiny: tuple, cond: Conditioning) -> None:
    unet, vae, _, scheduler = tiny
    steps, frames, context, overlap = 3, 24, 8, 4
    ticks: list[tuple[int, int]] = []
    start = time.perf_counter()
    latents, calls = unet_frame_counts(unet, lambda: sampling.denoise(
        unet, scheduler, cond, frames, SIZE, SIZE, steps, GUIDANCE, 9, context_frames=context,
        context_overlap=overlap, progress=lambda i, n: ticks.append((i, n))))
    seconds = time.perf_counter() - start
    windows = context_windows(frames, context, overlap)
    assert latents.shape == (1, 4, frames, SIZE // 4, SIZE // 4) and bool(torch.isfinite(latents).all())
    assert calls == [context] * (steps * len(windows))  # the UNet3D never saw more than one window
    assert ticks == [(i, steps) for i in range(1, steps + 1)]
    video = sampling.vae_decode(vae, latents)
    assert video.num_frames == frames
    plain = sampling.denoise(unet, scheduler, cond, frames, SIZE, SIZE, steps, GUIDANCE, 9)
    assert (latents - plain).abs().max().item() > 1e-3  # windows change the result once they are shorter
    print(f"{frames} frames in windows of {context} (overlap {overlap}), {steps} steps: {seconds:.2f} s")


def test_node_inputs_and_located_errors(reelgraph_home: Path, make_engine: Callable[..., Engine],
                                        tmp_path: Path) -> None:
    engine = make_engine()
    fast = {"steps": 2, "frames": 12, "height": SIZE, "width": SIZE}
    windowed = engine.run(LONG, fast, outputs=["sample.latents"], out_dir=tmp_path).outputs["sample.latents"]
    whole = engine.run(LONG, {**fast, "context_frames": 12}, outputs=["sample.latents"], out_dir=tmp_path)
    beyond = engine.run(LONG, {**fast, "context_frames": 40}, outputs=["sample.latents"], out_dir=tmp_path)
    assert torch.equal(whole.outputs["sample.latents"].tensor, beyond.outputs["sample.latents"].tensor)
    assert not torch.equal(windowed.tensor, whole.outputs["sample.latents"].tensor)
    with pytest.raises(NodeFailed) as info:
        engine.run(LONG, {**fast, "context_overlap": 8}, out_dir=tmp_path)
    assert (info.value.code, info.value.node, info.value.input) == ("invalid_value", "sample", "context_overlap")
    problems = engine.validate(LONG, {"context_fuse": "gauss", "context_frames": 0})
    assert sorted((p.code, p.node, p.input) for p in problems) == [
        ("invalid_value", "sample", "context_frames"), ("invalid_value", "sample", "context_fuse")]


def test_long_video_workflow_runs_from_the_cli(reelgraph_home: Path, tmp_path: Path) -> None:
    from reelgraph.nodes.video_io import read_video

    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "reelgraph", "run", str(LONG), "--out", str(tmp_path),
                           "--set", "steps=3", "--quiet", "--record", str(tmp_path / "record.json")],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    written = tmp_path / "long_video.mp4"
    assert proc.stdout.strip() == f"save.path = {written}"
    video = read_video(written)
    assert (video.num_frames, video.fps, video.height, video.width) == (24, 8.0, 32, 32)
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["status"] == "finished" and record["params"]["context_frames"] == 8
    print(f"long_video from the CLI, 24 frames in windows of 8, 3 steps: {seconds:.1f} s")
