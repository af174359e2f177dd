"""Read and write video files with PyAV, streaming frame by frame.

Writing produces, by the file's extension:

* ``.mp4``: H.264 (libx264). At ``crf`` 1-51 it is yuv420p, the format every player handles. yuv420p
  cannot store odd widths or heights, so an odd-sized clip is padded by one row/column (repeating the edge)
  and the true size is recorded in the MP4's ``comment`` tag as ``reelgraph-crop=WxH``; ``read_video`` crops
  it back, so a round trip keeps the size. Other players show the extra edge pixels. At ``crf=0`` it is
  H.264 4:4:4 (yuv444p, lossless ``qp 0``, the High 4:4:4 Predictive profile): no chroma subsampling and no
  compression loss, so only the 8-bit RGB -> Y'CbCr rounding remains (about 52 dB PSNR on any content, noise
  included, at most 2 levels off; yuv420p at crf 0 gave 24 dB on a colour texture). Odd sizes are stored as
  they are. ffmpeg, VLC and mpv play it; most browsers, QuickTime and hardware decoders do not.
* ``.mkv``: FFV1 (lossless) in RGB (``bgr0``), any size: a round trip through ``read_video`` gives back the
  8-bit frames bit for bit. ``crf`` is ignored. ffmpeg, VLC and mpv play it; browsers and QuickTime do not.
* ``.gif``: any size, but only 8-bit colour (``rgb8``) and frame delays in 1/100 s, so its frame rate is
  approximate.

Colour: the RGB -> Y'CbCr conversion for MP4 is done here (BT.709 matrix, limited range; for yuv420p chroma
averaged onto H.264's default left-sited positions), and the stream is tagged BT.709. FFmpeg's scaler, by
default, subsamples chroma as if it were centre-sited and upsamples it nearest-neighbour, which costs about
10 dB PSNR on a round trip even without compression. Decoding uses the scaler with full-chroma bicubic
interpolation and the frame's own colour range and matrix tags.

The crop tag is checked against the stream before it is used: it must name a size of at least 1x1, no
larger than the coded frames and at most one pixel smaller per side (the padding reelgraph adds). Any other
tag (``0x0``, ``999999x999999``, a tag copied from another file) was not written by reelgraph for these
frames: it is ignored, with a warning, and the frames are returned at their coded size.

Writes are atomic: the file is encoded under a temporary name in the destination folder and moved into
place with ``os.replace``, so a reader never sees a half-written file and a failed write leaves nothing.
A file that cannot be demuxed or decoded, or whose frames change size mid-stream, raises
``VideoDecodeError``.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reelgraph.files import atomic_path
from reelgraph.memory import tensor_nbytes

from .values import Video

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = ["VideoDecodeError", "read_video", "write_video"]

ProgressFn = Callable[[int, int], None]

logger = logging.getLogger(__name__)

_CROP_TAG = re.compile(r"reelgraph-crop=(\d+)x(\d+)")
#: Extensions ``write_video`` writes, and their container formats.
_FORMATS = {".mp4": "mp4", ".mkv": "matroska", ".gif": "gif"}
#: Bytes held per pixel channel of a kept frame: the uint8 frame while decoding + the float32 result.
_DECODE_BYTES = 1 + 4


class VideoDecodeError(ValueError):
    """A video file exists but cannot be opened or decoded (corrupt, truncated, or not a video)."""


def _resize(arr: np.ndarray, height: int | None, width: int | None) -> np.ndarray:
    """Resize an RGB ``[H, W, 3]`` uint8 array with FFmpeg's scaler (area when shrinking, else bicubic);
    a missing side keeps the aspect ratio."""
    import av

    src_h, src_w = arr.shape[:2]
    if height is None and width is None:
        return arr
    if height is None:
        height = max(1, round(src_h * width / src_w))
    if width is None:
        width = max(1, round(src_w * height / src_h))
    if (height, width) == (src_h, src_w):
        return arr
    mode = "AREA" if height <= src_h and width <= src_w else "BICUBIC"
    frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
    return frame.reformat(width=width, height=height, format="rgb24", interpolation=mode).to_ndarray()


def _output_size(src_h: int, src_w: int, crop: tuple[int, int] | None, height: int | None,
                 width: int | None) -> tuple[int, int]:
    """The frame size ``read_video`` returns for a stream of ``src_h`` x ``src_w`` (crop, then resize)."""
    h, w = (crop[1], crop[0]) if crop else (src_h, src_w)
    if height and width:
        return height, width
    if height:
        return height, max(1, round(w * height / h))
    if width:
        return max(1, round(h * width / w)), width
    return h, w


def _valid_crop(tag: tuple[int, int] | None, coded_w: int, coded_h: int, path: Path) -> tuple[int, int] | None:
    """The ``reelgraph-crop`` size ``(W, H)`` to apply to frames of ``coded_w`` x ``coded_h``, or None.

    Only a tag reelgraph could have written for these frames counts: at least 1x1, no larger than the coded
    size and at most one pixel smaller per side (the even-size padding). Another tag is ignored (logged).
    """
    if tag is None:
        return None
    w, h = tag
    if 1 <= w <= coded_w and 1 <= h <= coded_h and coded_w - w <= 1 and coded_h - h <= 1:
        return None if (w, h) == (coded_w, coded_h) else (w, h)
    logger.warning("%s: ignoring the crop tag reelgraph-crop=%dx%d, which does not fit its %dx%d frames "
                   "(reelgraph pads by at most one pixel per side)", path, w, h, coded_w, coded_h)
    return None


def _decode_bytes(frames: int, out_h: int, out_w: int, coded_h: int, coded_w: int) -> int:
    """Memory to hold ``frames`` kept frames (uint8 while decoding, then the float32 result) plus one frame
    being converted and resized at its coded size."""
    return tensor_nbytes((frames, 3, out_h, out_w), _DECODE_BYTES) + 2 * tensor_nbytes((coded_h, coded_w, 3), 1)


def read_video(
    path: str | os.PathLike[str],
    start: int = 0,
    max_frames: int | None = None,
    every_nth: int = 1,
    height: int | None = None,
    width: int | None = None,
    progress: ProgressFn | None = None,
    reserve: Callable[[int], None] | None = None,
) -> Video:
    """Decode a video file into a float32 ``Video`` ``[F, 3, H, W]`` in ``[0, 1]``.

    Frames are decoded one at a time; frame ``start`` (0-based, in decode order) is the first kept, then
    every ``every_nth`` frame, at most ``max_frames`` of them, and decoding stops as soon as enough are
    kept. ``height``/``width`` resize every frame (give one to keep the aspect ratio). The frame rate of the
    result is the stream's average rate divided by ``every_nth``. ``progress(kept, expected)`` is called
    after each kept frame; ``expected`` is an estimate from the container (0 when it is unknown).

    ``reserve(nbytes)`` may raise to refuse a clip too large to hold. It is called before decoding with the
    memory the frames the container announces will take, then again before each kept frame is converted with
    the running total (the frames kept so far and this one). So a stream that announces no frame count
    (Matroska, WebM, MPEG-TS) or a wrong one is refused as soon as it outgrows the budget, not after.

    Raises ``FileNotFoundError`` for a missing file, ``VideoDecodeError`` for one that does not decode (or
    whose frames change size mid-stream), and ``ValueError`` for bad arguments or a ``start`` past the last
    frame.
    """
    import av
    import torch
    from av.video.reformatter import Interpolation

    to_rgb = Interpolation.BICUBIC | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    if every_nth < 1:
        raise ValueError(f"every_nth must be >= 1, got {every_nth}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")
    for name, value in (("height", height), ("width", width)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1 or None, got {value}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file {str(path)!r} does not exist")

    try:
        container = av.open(str(path), "r")
    except av.FFmpegError as exc:
        raise VideoDecodeError(f"cannot open {str(path)!r} as a video: {exc}") from exc
    kept: list[np.ndarray] = []
    decoded = 0
    with container:
        if not container.streams.video:
            raise VideoDecodeError(f"{str(path)!r} has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 25.0
        tag = None
        match = _CROP_TAG.search(str(container.metadata.get("comment", "")))
        if match:
            tag = (int(match.group(1)), int(match.group(2)))
        coded_w, coded_h = int(stream.width or 0), int(stream.height or 0)
        crop = _valid_crop(tag, coded_w, coded_h, path) if coded_w and coded_h else None
        total = int(stream.frames or 0)
        expected = math.ceil(max(total - start, 0) / every_nth) if total else 0
        if max_frames is not None:
            expected = min(expected, max_frames) if expected else max_frames
        if reserve is not None and expected and coded_w and coded_h:
            out_h, out_w = _output_size(coded_h, coded_w, crop, height, width)
            reserve(_decode_bytes(expected, out_h, out_w, coded_h, coded_w))
        first: tuple[int, int] | None = None
        try:
            for frame in container.decode(stream):
                index = decoded
                decoded += 1
                if index < start or (index - start) % every_nth:
                    continue
                size = (int(frame.width), int(frame.height))
                if first is None:
                    first = size
                    if size != (coded_w, coded_h):  # the header was wrong: the frames decide
                        crop = _valid_crop(tag, *size, path)
                    out_h, out_w = _output_size(size[1], size[0], crop, height, width)
                elif size != first:
                    raise VideoDecodeError(f"{str(path)!r}: frame {index} is {size[0]}x{size[1]}, but the "
                                           f"stream started at {first[0]}x{first[1]}; re-encode it at one size")
                if reserve is not None:
                    reserve(_decode_bytes(len(kept) + 1, out_h, out_w, size[1], size[0]))
                arr = frame.to_ndarray(format="rgb24", interpolation=to_rgb, src_color_range=frame.color_range)
                if crop is not None:
                    arr = arr[: crop[1], : crop[0]]
                kept.append(_resize(arr, height, width))
                if progress is not None:
                    progress(len(kept), expected)
                if max_frames is not None and len(kept) >= max_frames:
                    break
        except av.FFmpegError as exc:
            raise VideoDecodeError(f"{str(path)!r} failed to decode after {decoded} frame(s): {exc}") from exc
    if not kept:
        if decoded == 0:
            raise VideoDecodeError(f"{str(path)!r} has a video stream but no decodable frame")
        raise ValueError(f"start={start} is past the end of {str(path)!r}, which has {decoded} frame(s)")

    h, w = kept[0].shape[:2]
    out = torch.empty((len(kept), 3, h, w), dtype=torch.float32)
    for i, arr in enumerate(kept):
        out[i] = torch.from_numpy(arr).permute(2, 0, 1)
    kept.clear()
    out.div_(255.0)
    return Video(frames=out, fps=fps / every_nth)


# BT.709 luma weights and the Cb/Cr denominators 2*(1-Kb), 2*(1-Kr); AVCOL_* codes for the stream tags.
_KR, _KG, _KB = 0.2126, 0.7152, 0.0722
_CB_DIV, _CR_DIV = 2 * (1 - _KB), 2 * (1 - _KR)
_AVCOL_BT709 = 1
_AVCOL_RANGE_MPEG = 1


def _rgb_to_ycbcr(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BT.709 luma ``[H, W]`` and the two chroma planes ``[2, H, W]`` (Cb, Cr in [-0.5, 0.5]) of float RGB."""
    import torch

    r, g, b = rgb[0], rgb[1], rgb[2]
    luma = _KR * r + _KG * g + _KB * b
    return luma, torch.stack([(b - luma) / _CB_DIV, (r - luma) / _CR_DIV])


def _limited_range(luma: torch.Tensor, chroma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """8-bit limited-range (studio swing) Y' and CbCr planes."""
    import torch

    y_plane = (16 + 219 * luma).round().clamp(0, 255).to(torch.uint8)
    c_planes = (128 + 224 * chroma).round().clamp(0, 255).to(torch.uint8)
    return y_plane, c_planes


def _rgb_to_yuv420p(rgb: torch.Tensor) -> np.ndarray:
    """Convert float RGB ``[3, H, W]`` in ``[0, 1]`` (H, W even) to a planar yuv420p uint8 array
    ``[H * 3 / 2, W]``: BT.709, limited range, chroma left-sited (co-sited with even columns, between rows)
    as H.264 assumes when nothing else is signalled."""
    import torch
    import torch.nn.functional as functional

    luma, chroma = _rgb_to_ycbcr(rgb)
    chroma = (chroma[:, 0::2, :] + chroma[:, 1::2, :]) * 0.5
    padded = functional.pad(chroma[None], (1, 1, 0, 0), mode="replicate")[0]
    chroma = (padded[:, :, 0:-2:2] + 2 * padded[:, :, 1:-1:2] + padded[:, :, 2::2]) * 0.25
    y_plane, c_planes = _limited_range(luma, chroma)
    height, width = y_plane.shape
    flat = torch.cat([y_plane.reshape(-1), c_planes.reshape(-1)])
    return flat.numpy().reshape(height * 3 // 2, width)


def _rgb_to_yuv444p(rgb: torch.Tensor) -> np.ndarray:
    """Convert float RGB ``[3, H, W]`` in ``[0, 1]`` to planar yuv444p uint8 ``[3, H, W]`` (BT.709, limited
    range, full-resolution chroma)."""
    import torch

    y_plane, c_planes = _limited_range(*_rgb_to_ycbcr(rgb))
    return torch.cat([y_plane[None], c_planes]).numpy()


def _encoding(fmt: str, crf: int) -> str:
    """How frames are encoded: ``h264`` (yuv420p), ``h264-444`` (lossless yuv444p), ``ffv1`` or ``gif``."""
    if fmt == "mp4":
        return "h264-444" if int(crf) == 0 else "h264"
    return "ffv1" if fmt == "matroska" else "gif"


def _open_stream(container: Any, encoding: str, rate: Fraction, width: int, height: int, crf: int) -> Any:
    """Add the video stream for ``encoding`` (see :func:`_encoding`) to an output container."""
    if encoding in ("h264", "h264-444"):
        stream = container.add_stream("libx264", rate=rate)
        if encoding == "h264":
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(int(crf))}
        else:  # qp 0 is x264's lossless mode; with 4:4:4 input it is the High 4:4:4 Predictive profile
            stream.pix_fmt = "yuv444p"
            stream.options = {"qp": "0", "profile": "high444"}
        context = stream.codec_context
        context.colorspace = _AVCOL_BT709
        context.color_primaries = _AVCOL_BT709
        context.color_trc = _AVCOL_BT709
        context.color_range = _AVCOL_RANGE_MPEG
    elif encoding == "ffv1":
        stream = container.add_stream("ffv1", rate=rate)
        stream.pix_fmt = "bgr0"  # RGB stored as is: lossless both ways (rgb24 <-> bgr0 only reorders bytes)
    else:
        stream = container.add_stream("gif", rate=rate)
        stream.pix_fmt = "rgb8"
    stream.width = width
    stream.height = height
    return stream


def write_video(
    video: Video,
    path: str | os.PathLike[str],
    fps: float | None = None,
    crf: int = 18,
    progress: ProgressFn | None = None,
) -> Path:
    """Encode ``video`` to ``path`` and return it: ``.mp4`` H.264 yuv420p at quality ``crf`` (``crf=0``:
    lossless H.264 4:4:4), ``.mkv`` FFV1 RGB (lossless, ``crf`` ignored) or ``.gif``.

    Frames are converted to 8-bit and encoded one at a time. ``fps`` overrides ``video.fps``. Odd yuv420p MP4
    sizes are padded to even and the crop recorded (see the module docstring). The file appears atomically;
    ``progress(written, total)`` is called after each frame and may raise to abort (nothing is left behind).
    """
    import av
    import torch
    import torch.nn.functional as functional

    path = Path(path)
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"unsupported video extension {path.suffix!r}; use one of {sorted(_FORMATS)}")
    if not 0 <= int(crf) <= 51:
        raise ValueError(f"crf must be in [0, 51], got {crf}")
    rate_value = float(fps if fps is not None else video.fps)
    if not rate_value > 0:
        raise ValueError(f"fps must be positive, got {rate_value}")
    rate = Fraction(rate_value).limit_denominator(1001)
    frames = video.frames
    n, channels, height, width = (int(s) for s in frames.shape)
    if channels not in (1, 3):
        raise ValueError(f"write_video needs 1 or 3 channels, got {channels}")
    encoding = _encoding(fmt, crf)
    pad_h, pad_w = (height % 2, width % 2) if encoding == "h264" else (0, 0)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"folder {str(path.parent)!r} does not exist")

    with atomic_path(path) as tmp:
        options = {"movflags": "+faststart"} if fmt == "mp4" else {}
        with av.open(str(tmp), "w", format=fmt, options=options) as container:
            if pad_h or pad_w:
                container.metadata["comment"] = f"reelgraph-crop={width}x{height}"
            stream = _open_stream(container, encoding, rate, width + pad_w, height + pad_h, crf)
            for i in range(n):
                pixels = frames[i].detach().to(device="cpu", dtype=torch.float32).clamp(0, 1)
                if channels == 1:
                    pixels = pixels.expand(3, height, width)
                if encoding == "h264":
                    if pad_h or pad_w:
                        pixels = functional.pad(pixels[None], (0, pad_w, 0, pad_h), mode="replicate")[0]
                    frame = av.VideoFrame.from_ndarray(_rgb_to_yuv420p(pixels), format="yuv420p")
                elif encoding == "h264-444":
                    frame = av.VideoFrame.from_ndarray(_rgb_to_yuv444p(pixels), format="yuv444p")
                else:
                    arr = (pixels * 255.0).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
                    frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
                if encoding.startswith("h264"):
                    frame.colorspace = _AVCOL_BT709
                    frame.color_range = _AVCOL_RANGE_MPEG
                frame.pts = i
                frame.time_base = 1 / rate
                for packet in stream.encode(frame):
                    container.mux(packet)
                if progress is not None:
                    progress(i + 1, n)
            for packet in stream.encode():
                container.mux(packet)
    return path
