"""Read and write video files with PyAV, streaming frame by frame.

Writing produces H.264 (libx264, yuv420p) in MP4, or GIF. yuv420p cannot store odd widths or heights, so an
odd-sized clip is padded by one row/column (repeating the edge) and the true size is recorded in the MP4's
``comment`` tag as ``reelgraph-crop=WxH``; ``read_video`` crops it back, so a round trip keeps the size.
Other players show the extra edge pixels. GIF stores any size, but only 8-bit colour (``rgb8``) and frame
delays in 1/100 s, so its frame rate is approximate.

Colour: the RGB -> Y'CbCr conversion for MP4 is done here (BT.709 matrix, limited range, chroma averaged
onto H.264's default left-sited positions), and the stream is tagged BT.709. FFmpeg's scaler, by default,
subsamples chroma as if it were centre-sited and upsamples it nearest-neighbour, which costs about 10 dB
PSNR on a round trip even without compression. Decoding uses the scaler with full-chroma bicubic
interpolation and the frame's own colour range and matrix tags.

Writes are atomic: the file is encoded under a temporary name in the destination folder and moved into
place with ``os.replace``, so a reader never sees a half-written file and a failed write leaves nothing.
A file that cannot be demuxed or decoded raises ``VideoDecodeError``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reelgraph.files import atomic_path

from .values import Video

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = ["VideoDecodeError", "read_video", "write_video"]

ProgressFn = Callable[[int, int], None]

_CROP_TAG = re.compile(r"reelgraph-crop=(\d+)x(\d+)")
_FORMATS = {".mp4": "mp4", ".gif": "gif"}


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
    ``reserve(nbytes)`` is called once before decoding with the estimated memory the frames will take (it
    may raise to refuse a clip too large to hold).

    Raises ``FileNotFoundError`` for a missing file, ``VideoDecodeError`` for one that does not decode, and
    ``ValueError`` for bad arguments or a ``start`` past the last frame.
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
        crop = None
        match = _CROP_TAG.search(str(container.metadata.get("comment", "")))
        if match:
            crop = (int(match.group(1)), int(match.group(2)))
        total = int(stream.frames or 0)
        expected = math.ceil(max(total - start, 0) / every_nth) if total else 0
        if max_frames is not None:
            expected = min(expected, max_frames) if expected else max_frames
        if reserve is not None and expected:
            out_h, out_w = _output_size(stream.height, stream.width, crop, height, width)
            reserve(expected * out_h * out_w * 3 * 5)  # uint8 frames while decoding + the float32 result
        try:
            for frame in container.decode(stream):
                index = decoded
                decoded += 1
                if index < start or (index - start) % every_nth:
                    continue
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


def _rgb_to_yuv420p(rgb: torch.Tensor) -> np.ndarray:
    """Convert float RGB ``[3, H, W]`` in ``[0, 1]`` (H, W even) to a planar yuv420p uint8 array
    ``[H * 3 / 2, W]``: BT.709, limited range, chroma left-sited (co-sited with even columns, between rows)
    as H.264 assumes when nothing else is signalled."""
    import torch
    import torch.nn.functional as functional

    r, g, b = rgb[0], rgb[1], rgb[2]
    luma = _KR * r + _KG * g + _KB * b
    chroma = torch.stack([(b - luma) / _CB_DIV, (r - luma) / _CR_DIV])
    chroma = (chroma[:, 0::2, :] + chroma[:, 1::2, :]) * 0.5
    padded = functional.pad(chroma[None], (1, 1, 0, 0), mode="replicate")[0]
    chroma = (padded[:, :, 0:-2:2] + 2 * padded[:, :, 1:-1:2] + padded[:, :, 2::2]) * 0.25
    y_plane = (16 + 219 * luma).round().clamp(0, 255).to(torch.uint8)
    c_planes = (128 + 224 * chroma).round().clamp(0, 255).to(torch.uint8)
    height, width = y_plane.shape
    flat = torch.cat([y_plane.reshape(-1), c_planes.reshape(-1)])
    return flat.numpy().reshape(height * 3 // 2, width)


def _open_stream(container: Any, fmt: str, rate: Fraction, width: int, height: int, crf: int) -> Any:
    """Add the video stream for ``fmt`` to an output container."""
    if fmt == "mp4":
        stream = container.add_stream("libx264", rate=rate)
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(int(crf))}
        context = stream.codec_context
        context.colorspace = _AVCOL_BT709
        context.color_primaries = _AVCOL_BT709
        context.color_trc = _AVCOL_BT709
        context.color_range = _AVCOL_RANGE_MPEG
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
    """Encode ``video`` to ``path`` (``.mp4``: H.264 yuv420p at quality ``crf``; ``.gif``) and return it.

    Frames are converted to 8-bit and encoded one at a time. ``fps`` overrides ``video.fps``. Odd MP4 sizes
    are padded to even and the crop recorded (see the module docstring). The file appears atomically;
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
    pad_h, pad_w = (height % 2, width % 2) if fmt == "mp4" else (0, 0)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"folder {str(path.parent)!r} does not exist")

    with atomic_path(path) as tmp:
        options = {"movflags": "+faststart"} if fmt == "mp4" else {}
        with av.open(str(tmp), "w", format=fmt, options=options) as container:
            if pad_h or pad_w:
                container.metadata["comment"] = f"reelgraph-crop={width}x{height}"
            stream = _open_stream(container, fmt, rate, width + pad_w, height + pad_h, crf)
            for i in range(n):
                pixels = frames[i].detach().to(device="cpu", dtype=torch.float32).clamp(0, 1)
                if channels == 1:
                    pixels = pixels.expand(3, height, width)
                if fmt == "mp4":
                    if pad_h or pad_w:
                        pixels = functional.pad(pixels[None], (0, pad_w, 0, pad_h), mode="replicate")[0]
                    frame = av.VideoFrame.from_ndarray(_rgb_to_yuv420p(pixels), format="yuv420p")
                    frame.colorspace = _AVCOL_BT709
                    frame.color_range = _AVCOL_RANGE_MPEG
                else:
                    arr = (pixels * 255.0).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
                    frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
                frame.pts = i
                frame.time_base = 1 / rate
                for packet in stream.encode(frame):
                    container.mux(packet)
                if progress is not None:
                    progress(i + 1, n)
            for packet in stream.encode():
                container.mux(packet)
    return path
