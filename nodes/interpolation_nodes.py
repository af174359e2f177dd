"""Node: frame interpolation in pixel space (optical-flow warping or cross-fade)."""

from __future__ import annotations

from typing import Annotated, Literal, NamedTuple

from pydantic import Field

from reelgraph import RunContext, node
from reelgraph.memory import check_tensor_memory

from .values import Video


class Interpolated(NamedTuple):
    """The denser clip and its frame rate (a float, to wire into nodes that stamp one, like ``vae_decode``)."""

    video: Video
    fps: float


@node("interpolate_frames", category="video")
def interpolate_frames(
    video: Video,
    ctx: RunContext,
    multiplier: Annotated[int, Field(ge=2, le=64)] = 2,
    method: Literal["flow", "blend"] = "flow",
    fps: Annotated[float, Field(gt=0, le=1000)] | None = None,
) -> Interpolated:
    """Insert frames between neighbours: N frames become (N-1)*multiplier+1, the originals kept unchanged.

    ``flow`` estimates dense optical flow both ways (OpenCV DIS), warps both neighbours to the in-between
    time and blends them, trusting each only where the content is visible in it (occlusion-aware);
    ``blend`` cross-fades. On synthetic moving textures ``flow`` is 15-30 dB PSNR better than ``blend``.
    A result too large for ``--max-memory`` is refused (``too_large``, input ``multiplier``) before it is
    allocated.

    Args:
        video: the clip, e.g. keyframes from ``vae_decode``.
        multiplier: output frames per input interval; every multiplier-th output frame is an original.
        method: ``flow`` (motion-compensated) or ``blend`` (cross-fade baseline).
        fps: frame rate of the result (default: the input's times multiplier, so the duration is kept).
    """
    from .interpolation import interpolate, output_shape, workspace_bytes

    shape = output_shape(tuple(video.frames.shape), multiplier)
    check_tensor_memory(ctx, shape, 4, f"interpolating {shape[0]} frames of {shape[3]}x{shape[2]}", "multiplier",
                        extra=workspace_bytes(tuple(video.frames.shape), multiplier, method))
    frames = interpolate(video.frames, multiplier, method, progress=lambda i, n: ctx.progress(i, n))
    rate = fps if fps is not None else video.fps * multiplier
    return Interpolated(Video(frames=frames, fps=rate), float(rate))
