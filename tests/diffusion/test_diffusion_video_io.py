"""Video files: MP4/GIF round trips, frame selection, atomic writes and clear decode errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from reelgraph.nodes.values import Video
from reelgraph.nodes.video_io import VideoDecodeError, read_video, write_video

torch = pytest.importorskip("torch")
pytest.importorskip("av")


def smooth_clip(frames: int = 12, height: int = 48, width: int = 64) -> torch.Tensor:
    """Moving colour gradients plus a soft disc sliding right: smooth content, like a generated clip."""
    t = torch.arange(frames, dtype=torch.float32).view(frames, 1, 1)
    y = torch.arange(height, dtype=torch.float32).view(1, height, 1)
    x = torch.arange(width, dtype=torch.float32).view(1, 1, width)
    red = 0.5 + 0.4 * torch.sin((x + 2 * t) / width * 2 * math.pi)
    green = 0.5 + 0.4 * torch.cos((y - t) / height * 2 * math.pi)
    dist = ((x - (10 + 3 * t)) ** 2 + (y - height / 2) ** 2).sqrt()
    blue = 0.2 + 0.6 * torch.sigmoid((height / 5 - dist) / 2)
    shape = (frames, height, width)
    return torch.stack([red.expand(shape), green.expand(shape), blue.expand(shape)], dim=1).contiguous()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(1.0 / ((a - b) ** 2).mean().item())


@pytest.mark.parametrize(("height", "width"), [(48, 64), (33, 47)])
def test_mp4_round_trip(tmp_path: Path, height: int, width: int) -> None:
    clip = Video(smooth_clip(12, height, width), fps=12)
    calls: list[tuple[int, int]] = []
    path = write_video(clip, tmp_path / "clip.mp4", crf=18, progress=lambda i, n: calls.append((i, n)))
    assert calls[-1] == (12, 12)
    back = read_video(path)
    assert back.frames.shape == clip.frames.shape
    assert back.fps == pytest.approx(12.0)
    value = psnr(back.frames, clip.frames)
    print(f"mp4 crf 18 {width}x{height}: PSNR {value:.2f} dB")
    assert value >= 35.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]
    resized = read_video(path, height=16, width=20)  # the recorded crop applies before resizing
    assert resized.frames.shape == (12, 3, 16, 20)


def test_fractional_fps_is_kept(tmp_path: Path) -> None:
    path = write_video(Video(smooth_clip(6, 16, 16), fps=8), tmp_path / "a.mp4", fps=29.97)
    assert read_video(path).fps == pytest.approx(29.97, abs=1e-3)


def test_read_selection_and_resize(tmp_path: Path) -> None:
    path = write_video(Video(smooth_clip(12, 48, 64), fps=12), tmp_path / "clip.mp4")
    full = read_video(path)
    seen: list[int] = []
    part = read_video(path, start=2, every_nth=3, max_frames=3, progress=lambda i, n: seen.append(i))
    assert part.num_frames == 3
    assert part.fps == pytest.approx(4.0)
    assert seen == [1, 2, 3]
    assert torch.equal(part.frames, full.frames[2:9:3])
    tail = read_video(path, start=10)
    assert tail.num_frames == 2
    small = read_video(path, height=24)
    assert (small.height, small.width) == (24, 32)
    assert psnr(small.frames, torch.nn.functional.avg_pool2d(full.frames, 2)) > 30
    with pytest.raises(ValueError, match="past the end"):
        read_video(path, start=50)
    with pytest.raises(ValueError, match="every_nth"):
        read_video(path, every_nth=0)


def test_gif_round_trip(tmp_path: Path) -> None:
    clip = Video(smooth_clip(6, 21, 30), fps=10)
    back = read_video(write_video(clip, tmp_path / "clip.gif"))
    assert back.frames.shape == clip.frames.shape
    assert back.fps == pytest.approx(10.0, rel=0.05)
    assert psnr(back.frames, clip.frames) > 15  # 8-bit rgb332 palette: coarse colours


def test_undecodable_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00not a video\xff" * 64)
    with pytest.raises(VideoDecodeError, match=r"garbage\.mp4"):
        read_video(garbage)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoDecodeError):
        read_video(empty)
    good = write_video(Video(smooth_clip(12, 48, 64), fps=12), tmp_path / "good.mp4")
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(VideoDecodeError):
        read_video(truncated)
    with pytest.raises(FileNotFoundError):
        read_video(tmp_path / "missing.mp4")
    assert issubclass(VideoDecodeError, ValueError)


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out.mp4"
    write_video(Video(smooth_clip(4, 16, 16)), target)
    before = target.read_bytes()

    def boom(i: int, n: int) -> None:
        if i == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_video(Video(smooth_clip(8, 32, 32)), target, progress=boom)
    assert target.read_bytes() == before  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]  # no temporary file left
    with pytest.raises(ValueError, match="extension"):
        write_video(Video(smooth_clip(2, 16, 16)), tmp_path / "out.avi")
