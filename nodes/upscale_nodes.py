"""Node: classical spatial resizing of a video (the first stage of super-resolution)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from reelgraph import NodeInputError, RunContext, node

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

    Downscaling works too. The frame rate is kept; filtered results are clamped to [0, 1].

    Args:
        video: the frames to resize.
        factor: scale both sides by this (e.g. 2); give either this or height/width.
        height: target height in pixels (alone: width follows the aspect ratio).
        width: target width in pixels (alone: height follows the aspect ratio).
        method: ``bicubic`` or ``lanczos`` for pictures (antialiased when shrinking), ``bilinear``, or
            ``nearest`` for masks and labels (an integer factor repeats each pixel exactly).
    """
    from .resize import resize, target_size

    try:
        new_h, new_w = target_size(video.height, video.width, factor, height, width)
    except ValueError as exc:
        raise NodeInputError(str(exc), input="factor") from exc
    frames = resize(video.frames, new_h, new_w, method, progress=lambda i, n: ctx.progress(i, n))
    if method != "nearest":
        frames.clamp_(0, 1)
    return Video(frames=frames, fps=video.fps)
