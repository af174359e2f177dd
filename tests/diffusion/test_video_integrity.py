"""Issue 16, video files: lossless outputs (.mkv FFV1 RGB, crf=0 H.264 4:4:4), crop tags checked against the
stream, and streams without a frame count bounded by --max-memory while they decode."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from reelgraph import Engine, Event, NodeFailed
from reelgraph.nodes.values import Video
from reelgraph.nodes.video_io import read_video, write_video

from .test_diffusion_video_io import psnr, smooth_clip

torch = pytest.importorskip("torch")
av = pytest.importorskip("av")


def noise_clip(frames: int = 6, height: int = 33, width: int = 47, seed: int = 0) -> torch.Tensor:
    """Uniform random 8-bit colour noise (exact multiples of 1/255): the worst case for chroma subsampling."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (frames, 3, height, width), generator=g).float() / 255


def write_raw(path: Path, frames: int, height: int, width: int, codec: str = "libx264", pix_fmt: str = "yuv420p",
              fmt: str | None = None, comment: str | None = None) -> Path:
    """Encode a moving gradient with PyAV directly (not with reelgraph's writer), optionally tagged."""
    with av.open(str(path), "w", format=fmt) as container:
        if comment is not None:
            container.metadata["comment"] = comment
        stream = container.add_stream(codec, rate=Fraction(8))
        stream.pix_fmt, stream.width, stream.height = pix_fmt, width, height
        y, x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        for i in range(frames):
            rgb = torch.stack([(x * 4 + i * 8) % 256, (y * 4) % 256, (x + y + i * 16) % 256], dim=-1)
            frame = av.VideoFrame.from_ndarray(rgb.to(torch.uint8).numpy(), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def stream_info(path: Path) -> tuple[str, str, str | None, int, int]:
    with av.open(str(path)) as container:
        ctx = container.streams.video[0].codec_context
        return ctx.name, ctx.pix_fmt, ctx.profile, ctx.width, ctx.height


def load_workflow(folder: Path, clip: str, **inputs: Any) -> Path:
    path = folder / "load.json"
    path.write_text(json.dumps({"reelgraph": 1, "name": "load", "nodes": {
        "clip": {"type": "load_video", "inputs": {"path": clip, **inputs}}}}), encoding="utf-8")
    return path


@pytest.fixture
def engine(make_engine: Callable[..., Engine]) -> Engine:
    return make_engine()


# --- lossless outputs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("height", "width"), [(33, 47), (32, 48)])
def test_mkv_is_ffv1_rgb_and_round_trips_bit_exactly(tmp_path: Path, height: int, width: int) -> None:
    clip = noise_clip(6, height, width)
    path = write_video(Video(clip, fps=8), tmp_path / "clip.mkv", crf=23)  # crf does not apply to FFV1
    assert stream_info(path) == ("ffv1", "bgr0", None, width, height)
    back = read_video(path)
    assert back.fps == pytest.approx(8.0)
    assert torch.equal((back.frames * 255).round().to(torch.uint8), (clip * 255).round().to(torch.uint8))
    assert torch.equal(back.frames, clip)  # the same k/255 floats, not merely close


def test_save_video_mkv_through_the_engine_is_bit_exact(engine: Engine, tmp_path: Path) -> None:
    source = write_video(Video(noise_clip(5, 21, 30, seed=3), fps=12), tmp_path / "source.mkv")
    doc = tmp_path / "copy.json"
    doc.write_text(json.dumps({"reelgraph": 1, "name": "copy", "nodes": {
        "clip": {"type": "load_video", "inputs": {"path": "source.mkv"}},
        "save": {"type": "save_video", "inputs": {"video": {"from": "clip.video"}, "path": "copy.mkv"}}}}))
    result = engine.run(doc, out_dir=tmp_path / "out")
    written = result.outputs["save.path"]
    assert written == tmp_path / "out" / "copy.mkv"
    assert torch.equal(read_video(written).frames, read_video(source).frames)


@pytest.mark.parametrize("content", ["noise", "smooth"])
def test_crf0_mp4_is_h264_444_and_reads_back_above_40db(tmp_path: Path, content: str) -> None:
    clip = noise_clip(8, 33, 47) if content == "noise" else smooth_clip(12, 48, 64)
    path = write_video(Video(clip, fps=8), tmp_path / "clip.mp4", crf=0)
    height, width = clip.shape[2:]
    assert stream_info(path) == ("h264", "yuv444p", "High 4:4:4 Predictive", width, height)  # odd sizes kept
    back = read_video(path)
    assert back.frames.shape == clip.shape
    value = psnr(back.frames, clip)
    print(f"crf 0 mp4 ({content}): {value:.2f} dB")
    assert value >= 40.0
    lossy = write_video(Video(clip, fps=8), tmp_path / "lossy.mp4", crf=18)
    assert stream_info(lossy)[:2] == ("h264", "yuv420p")  # lossy MP4 is unchanged: every player reads it


# --- crop tags -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tag", ["0x0", "999999x999999", "10x10", "49x34", "48x35", "47x0"])
def test_crop_tags_that_do_not_fit_the_stream_are_ignored(engine: Engine, tmp_path: Path, tag: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    plain = read_video(write_raw(tmp_path / "plain.mp4", 3, 34, 48))
    write_raw(tmp_path / "tagged.mp4", 3, 34, 48, comment=f"reelgraph-crop={tag}")
    with caplog.at_level(logging.WARNING):
        result = engine.run(load_workflow(tmp_path, "tagged.mp4"), outputs=["clip.video"], out_dir=tmp_path / "o")
    frames = result.outputs["clip.video"].frames
    assert frames.shape == (3, 3, 34, 48)
    assert torch.equal(frames, plain.frames)
    assert f"ignoring the crop tag reelgraph-crop={tag}" in caplog.text
    resized = read_video(tmp_path / "tagged.mp4", height=17)  # resizing after a bad tag: no division by zero
    assert resized.frames.shape == (3, 3, 17, 24)


def test_crop_tags_reelgraph_writes_still_crop(tmp_path: Path) -> None:
    write_raw(tmp_path / "padded.mp4", 2, 34, 48, comment="reelgraph-crop=47x33")
    plain = read_video(write_raw(tmp_path / "plain.mp4", 2, 34, 48))
    back = read_video(tmp_path / "padded.mp4")
    assert torch.equal(back.frames, plain.frames[:, :, :33, :47])


# --- streams without a frame count -----------------------------------------------------------------------------

STREAMS = {  # extension: (container format, codec, pixel format)
    "mkv": ("matroska", "libx264", "yuv420p"),
    "webm": ("webm", "libvpx-vp9", "yuv420p"),
    "ts": ("mpegts", "libx264", "yuv420p"),
}
PER_FRAME = 64 * 64 * 3 * (1 + 4)  # uint8 while decoding + the float32 result
WORKING = 2 * 64 * 64 * 3  # one frame being converted


@pytest.mark.parametrize("ext", sorted(STREAMS))
def test_streams_without_a_frame_count_are_refused_while_decoding(engine: Engine, tmp_path: Path,
                                                                 ext: str) -> None:
    fmt, codec, pix_fmt = STREAMS[ext]
    path = write_raw(tmp_path / f"clip.{ext}", 24, 64, 64, codec=codec, pix_fmt=pix_fmt, fmt=fmt)
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0  # the container announces no count: nothing to check up front
    events: list[Event] = []
    budget = 7 * PER_FRAME + WORKING  # seven frames fit, the eighth does not
    with pytest.raises(NodeFailed) as info:
        engine.run(load_workflow(tmp_path, path.name), out_dir=tmp_path / "o", max_memory=budget,
                   events=[events.append])
    err = info.value
    assert (err.code, err.node, err.input) == ("too_large", "clip", "max_frames")
    kept = [e.i for e in events if e.event == "node_progress" and e.node == "clip"]
    assert kept == list(range(1, 8))  # refused before converting frame 8, not after decoding all 24
    # under the budget the same stream loads whole, and max_frames is the way to stay under it
    assert engine.run(load_workflow(tmp_path, path.name), out_dir=tmp_path / "o",
                      max_memory=24 * PER_FRAME + WORKING).outputs["clip.frames"] == 24
    assert engine.run(load_workflow(tmp_path, path.name, max_frames=7), out_dir=tmp_path / "o",
                      max_memory=budget).outputs["clip.frames"] == 7


def test_frames_that_change_size_mid_stream_are_a_decode_error(engine: Engine, tmp_path: Path) -> None:
    # MPEG-TS files concatenate: a 16x16 stream followed by a 64x64 one, as a spliced or crafted file may be
    small = write_raw(tmp_path / "a.ts", 3, 16, 16, fmt="mpegts")
    large = write_raw(tmp_path / "b.ts", 3, 64, 64, fmt="mpegts")
    (tmp_path / "spliced.ts").write_bytes(small.read_bytes() + large.read_bytes())
    with av.open(str(tmp_path / "spliced.ts")) as container:
        assert [f.width for f in container.decode(video=0)] == [16, 16, 16, 64, 64, 64]
    with pytest.raises(NodeFailed) as info:
        engine.run(load_workflow(tmp_path, "spliced.ts"), out_dir=tmp_path / "o")
    assert (info.value.code, info.value.node, info.value.input) == ("video_decode_failed", "clip", "path")
    assert "frame 3 is 64x64, but the stream started at 16x16" in info.value.message
