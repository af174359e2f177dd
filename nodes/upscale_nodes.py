"""Node: classical spatial resizing of a video (the first stage of super-resolution)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from reelgraph import NodeInputError, RunContext, node
from reelgraph.memory import check_tensor_memory

from .values import Video

ResizeMethod = Literal["bicubic", "lanczos", "bilinear", "nearest"]
Side = Annotated[int, Field(ge=1, le=16384)]


@node("upscale_video", category="video", output="video")
def upscale_video(
    video: Video,
    ctx: RunContext,
    factor: Annotated[float, Field(gt=0, le=16)] | None = None,
    height: Side | None = None,
    width: Side | None = None,
    method: ResizeMethod = "bicubic",
) -> Video:
    """Resize every frame by a factor or to a target size (bicubic/Lanczos antialiased, or nearest).

    Downscaling works too. The frame rate is kept; filtered results are clamped to [0, 1]. A result too
    large for ``--max-memory`` is refused (``too_large``, naming the size input) before anything is allocated.

    Args:
        video: the frames to resize.
        factor: scale both sides by this (e.g. 2); give either this or height/width.
        height: target height in pixels (alone: width follows the aspect ratio).
        width: target width in pixels (alone: height follows the aspect ratio).
        method: ``bicubic`` or ``lanczos`` for pictures (antialiased when shrinking), ``bilinear``, or
            ``nearest`` for masks and labels (an integer factor repeats each pixel exactly).
    """
    from .resize import resize, target_size, workspace_bytes

    try:
        new_h, new_w = target_size(video.height, video.width, factor, height, width)
    except ValueError as exc:
        raise NodeInputError(str(exc), input="factor") from exc
    n, c = int(video.frames.shape[0]), int(video.frames.shape[1])
    size_input = "factor" if factor is not None else "height" if height is not None else "width"
    check_tensor_memory(ctx, (n, c, new_h, new_w), 4, f"resizing {n} frames to {new_w}x{new_h}", size_input,
                        extra=workspace_bytes(c, video.height, video.width, new_h, new_w, min(8, n)))
    frames = resize(video.frames, new_h, new_w, method, progress=lambda i, n: ctx.progress(i, n))
    if method != "nearest":
        frames.clamp_(0, 1)
    return Video(frames=frames, fps=video.fps)
