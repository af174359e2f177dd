"""Classical resizing: nearest is exact for integer factors, the filters match torch and Pillow, the node's
size rules."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from reelgraph import NodeInputError
from reelgraph.nodes.resize import resize, target_size
from reelgraph.nodes.upscale_nodes import upscale_video
from reelgraph.nodes.values import Video

torch = pytest.importorskip("torch")

CTX = SimpleNamespace(progress=lambda i, n: None, check_memory=lambda nbytes, what, input=None: None)
SIZES = [(74, 106), (20, 30), (111, 159), (13, 9), (50, 40)]


@pytest.fixture(scope="module")
def frames() -> torch.Tensor:
    return torch.rand(3, 3, 37, 53, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_nearest_integer_factor_repeats_pixels_exactly(frames: torch.Tensor, factor: int) -> None:
    out = resize(frames, 37 * factor, 53 * factor, "nearest")
    assert torch.equal(out, frames.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3))
    back = resize(out, 37, 53, "nearest")
    assert torch.equal(back, frames)
    clip = Video(frames, fps=6)
    video = upscale_video(clip, CTX, factor=float(factor), method="nearest")
    assert torch.equal(video.frames, out) and video.fps == 6


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("method", ["bilinear", "bicubic"])
def test_filters_match_torch_antialiased_interpolate(frames: torch.Tensor, size: tuple[int, int], method: str) -> None:
    ours = resize(frames, *size, method)
    ref = torch.nn.functional.interpolate(frames, size, mode=method, antialias=True, align_corners=False)
    assert (ours - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("size", SIZES)
def test_lanczos_matches_pillow(frames: torch.Tensor, size: tuple[int, int]) -> None:
    image = pytest.importorskip("PIL.Image")
    np = pytest.importorskip("numpy")
    h, w = size
    ours = resize(frames, h, w, "lanczos")
    for i in range(frames.shape[0]):
        for c in range(3):
            plane = image.fromarray(frames[i, c].numpy(), mode="F").resize((w, h), image.LANCZOS)
            assert np.abs(ours[i, c].numpy() - np.asarray(plane)).max() <= 1e-5


def test_antialiasing_removes_aliasing() -> None:
    """A pixel-level checkerboard shrunk by 4 is flat grey with a filter (away from the clipped border taps),
    and still aliased with nearest."""
    board = ((torch.arange(64)[:, None] + torch.arange(64)[None, :]) % 2).float().expand(1, 1, 64, 64)
    for method in ("bilinear", "bicubic", "lanczos"):
        assert (resize(board, 16, 16, method)[..., 1:-1, 1:-1] - 0.5).abs().max() <= 1e-3
    assert (resize(board, 16, 16, "nearest") - 0.5).abs().min() == 0.5


def test_target_size_rules() -> None:
    assert target_size(32, 48, factor=2) == (64, 96)
    assert target_size(32, 48, factor=0.5) == (16, 24)
    assert target_size(32, 48, new_height=64) == (64, 96)
    assert target_size(32, 48, new_width=24) == (16, 24)
    assert target_size(32, 48, new_height=10, new_width=10) == (10, 10)
    with pytest.raises(ValueError, match="not both"):
        target_size(32, 48, factor=2, new_height=64)
    with pytest.raises(ValueError, match="give a factor"):
        target_size(32, 48)


def test_node_sizes_clamping_and_errors() -> None:
    clip = Video(torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(1)), fps=12)
    out = upscale_video(clip, CTX, height=40, method="lanczos")
    assert (out.height, out.width, out.num_frames, out.fps) == (40, 60, 2, 12)
    assert out.frames.min() >= 0 and out.frames.max() <= 1
    with pytest.raises(NodeInputError) as info:
        upscale_video(clip, CTX)
    assert info.value.input == "factor"
    with pytest.raises(NodeInputError):
        upscale_video(clip, CTX, factor=2, width=10)
