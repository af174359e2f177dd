"""Frame interpolation: the frame-count and keyframe contracts, and flow vs blend on known synthetic motion."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from reelgraph import Engine
from reelgraph.nodes.interpolation import interpolate
from reelgraph.nodes.interpolation_nodes import interpolate_frames
from reelgraph.nodes.values import Video

torch = pytest.importorskip("torch")
pytest.importorskip("cv2")
pytest.importorskip("numpy")

ROOT = Path(__file__).resolve().parents[2]
ASSET = ROOT / "workflows" / "assets" / "red_circle_left.mp4"
CTX = SimpleNamespace(progress=lambda i, n: None, check_memory=lambda nbytes, what, input=None: None)

# Motions per frame of the true clip; keyframes are every other true frame, so between two keyframes the
# pattern moves twice as far and the true middle frame is known exactly.
MOTIONS = {
    "translate (3, 2) px": {"shift": (3.0, 2.0), "turn": 0.0},
    "rotate 4 deg": {"shift": (0.0, 0.0), "turn": 4.0},
    "translate (2, -1) px + rotate 3 deg": {"shift": (2.0, -1.0), "turn": 3.0},
}
MARGIN_DB = 10.0


def _texture(size: int = 256, seed: int = 0) -> torch.Tensor:
    """A colour texture ``[1, 3, size, size]`` in [0, 1]: Gaussian-filtered noise at four scales."""
    gen = torch.Generator().manual_seed(seed)
    acc = torch.zeros(1, 3, size, size)
    for sigma in (1.5, 3.0, 6.0, 12.0):
        radius = int(3 * sigma)
        x = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = torch.exp(-(x**2) / (2 * sigma**2))
        kernel = (kernel / kernel.sum()).repeat(3, 1, 1, 1)
        noise = torch.randn(1, 3, size, size, generator=gen)
        noise = torch.nn.functional.pad(noise, (radius, radius, radius, radius), mode="circular")
        noise = torch.nn.functional.conv2d(noise, kernel.view(3, 1, 1, -1), groups=3)
        noise = torch.nn.functional.conv2d(noise, kernel.view(3, 1, -1, 1), groups=3)
        acc += noise / noise.std()
    return (0.5 + 0.18 * acc / acc.std()).clamp(0, 1)


def _moving_clip(frames: int, size: int, shift: tuple[float, float], turn: float) -> torch.Tensor:
    """``[frames, 3, size, size]``: the texture turned ``turn`` degrees about the centre and moved ``shift``
    pixels per frame, each frame sampled from the same continuous (bicubic) texture, so ground truth is exact."""
    tex = _texture()
    big = tex.shape[-1]
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                            indexing="ij")
    x0, y0 = xs - (size - 1) / 2, ys - (size - 1) / 2
    out = []
    for i in range(frames):
        a = -math.radians(turn * i)
        u = x0 * math.cos(a) - y0 * math.sin(a) - shift[0] * i
        v = x0 * math.sin(a) + y0 * math.cos(a) - shift[1] * i
        grid = torch.stack([(2 * u + 1) / big, (2 * v + 1) / big], dim=-1).float()[None]
        out.append(torch.nn.functional.grid_sample(tex, grid, mode="bicubic", padding_mode="reflection",
                                                   align_corners=False)[0])
    return torch.stack(out).clamp(0, 1)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(1 / max(((a - b) ** 2).mean().item(), 1e-12))


@pytest.mark.parametrize("method", ["flow", "blend"])
@pytest.mark.parametrize("multiplier", [2, 3, 4])
def test_frame_count_and_keyframes_are_kept(method: str, multiplier: int) -> None:
    frames = torch.rand(4, 3, 24, 40, generator=torch.Generator().manual_seed(multiplier))
    out = interpolate(frames, multiplier, method)
    assert out.shape == ((4 - 1) * multiplier + 1, 3, 24, 40) and out.dtype == torch.float32
    assert torch.equal(out[::multiplier], frames)
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("method", ["flow", "blend"])
def test_edge_cases(method: str) -> None:
    one = torch.rand(1, 3, 16, 16)
    assert torch.equal(interpolate(one, 3, method), one)
    gray = torch.rand(3, 1, 20, 20)
    out = interpolate(gray, 2, method)
    assert out.shape == (5, 1, 20, 20) and torch.equal(out[::2], gray)
    still = torch.rand(1, 3, 32, 32).repeat(2, 1, 1, 1)
    assert (interpolate(still, 4, method) - still[0]).abs().max() <= 1e-6
    with pytest.raises(ValueError, match="method"):
        interpolate(one, 2, "cubic")


def test_blend_is_a_cross_fade() -> None:
    frames = torch.rand(2, 3, 8, 8)
    out = interpolate(frames, 4, "blend")
    for k in range(1, 4):
        t = k / 4
        assert torch.allclose(out[k], (1 - t) * frames[0] + t * frames[1], atol=1e-6)


def test_flow_beats_blend_on_known_motion() -> None:
    """On a textured pattern with known motion, the in-between frames of ``flow`` are much closer (PSNR) to
    the true in-between frames than those of ``blend``: at least ``MARGIN_DB`` better for every motion."""
    lines = []
    for name, motion in MOTIONS.items():
        truth = _moving_clip(5, 64, **motion)
        keys = truth[::2]
        scores = {m: _psnr(interpolate(keys, 2, m)[1::2], truth[1::2]) for m in ("flow", "blend")}
        lines.append(f"{name}: flow {scores['flow']:.1f} dB, blend {scores['blend']:.1f} dB")
        assert scores["flow"] >= scores["blend"] + MARGIN_DB, lines[-1]
        assert scores["flow"] >= 30.0, lines[-1]
    print("\n".join(lines))


def test_flow_beats_blend_at_every_in_between_time() -> None:
    truth = _moving_clip(5, 64, shift=(1.5, 1.0), turn=0.0)  # keyframes 0 and 4: (6, 4) px apart
    keys = truth[::4]
    flow, blend = interpolate(keys, 4, "flow"), interpolate(keys, 4, "blend")
    for k in (1, 2, 3):
        assert _psnr(flow[k], truth[k]) >= _psnr(blend[k], truth[k]) + MARGIN_DB


def test_node_sets_fps_and_validates(make_engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    clip = Video(torch.rand(3, 3, 16, 16), fps=4)
    result = interpolate_frames(clip, CTX, multiplier=3, method="blend")
    assert (result.video.num_frames, result.video.fps, result.fps) == (7, 12.0, 12.0)
    assert interpolate_frames(clip, CTX, multiplier=2, fps=5.0).video.fps == 5.0
    engine: Engine = make_engine()
    doc = {"reelgraph": 1, "nodes": {
        "clip": {"type": "load_video", "inputs": {"path": str(ASSET), "max_frames": 3}},
        "interp": {"type": "interpolate_frames", "inputs": {"video": {"from": "clip.video"}, "multiplier": 2}}}}
    out = engine.run(doc, outputs=["interp.video", "interp.fps", "clip.video"], out_dir=tmp_path).outputs
    assert out["interp.video"].num_frames == 5 and out["interp.fps"] == 2 * out["clip.video"].fps
    assert torch.equal(out["interp.video"].frames[::2], out["clip.video"].frames)
    doc["nodes"]["interp"]["inputs"].update(multiplier=1, method="optical")
    problems = engine.validate(doc)
    assert sorted((p.code, p.input) for p in problems) == [("invalid_value", "method"), ("invalid_value", "multiplier")]
