"""Nodes: turn frames into ControlNet control images (Canny edges, grayscale) and resize videos.

Edge detection uses OpenCV's ``cv2.Canny`` (``opencv-python-headless``), the detector the diffusers and
ControlNet canny examples use, imported only when the node runs. Outputs are ordinary ``Video`` values
with three identical channels in [0, 1], so they feed ``controlnet_condition`` and ``save_video`` alike.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from reelgraph import NodeInputError, RunContext, node
from reelgraph.memory import check_tensor_memory

from .values import Video

Threshold = Annotated[int, Field(ge=0, le=1000)]
# ITU-R BT.601 luma, the weights of OpenCV's COLOR_RGB2GRAY and PIL's "L" mode.
_LUMA = (0.299, 0.587, 0.114)


def _rgb(video: Video, input_name: str) -> None:
    """Refuse videos that are neither RGB nor single-channel."""
    channels = int(video.frames.shape[1])
    if channels not in (1, 3):
        raise NodeInputError(f"expected RGB or single-channel frames, got {channels} channels", input=input_name)


@node("canny_edges", category="preprocess", output="video")
def canny_edges(
    video: Video,
    ctx: RunContext,
    low_threshold: Threshold = 100,
    high_threshold: Threshold = 200,
) -> Video:
    """Canny edge maps of every frame (OpenCV), white edges on black, as ControlNet canny models expect.

    Frames are quantised to 8 bits as OpenCV requires; on RGB frames the gradient is taken per channel
    and the strongest one kept.

    Args:
        video: the source frames.
        low_threshold: hysteresis lower threshold on the 8-bit gradient magnitude.
        high_threshold: hysteresis upper threshold (at least ``low_threshold``).
    """
    import cv2
    import numpy as np
    import torch

    _rgb(video, "video")
    if high_threshold < low_threshold:
        raise NodeInputError(f"high_threshold ({high_threshold}) is below low_threshold ({low_threshold})",
                             input="high_threshold")
    frames = video.frames
    out = torch.empty((video.num_frames, 3, video.height, video.width), dtype=torch.float32)
    for i in range(video.num_frames):
        pixels = (frames[i].detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
        image = np.ascontiguousarray(pixels.permute(1, 2, 0).cpu().numpy())
        if image.shape[2] == 1:
            image = image[:, :, 0]
        edges = cv2.Canny(image, int(low_threshold), int(high_threshold))
        out[i] = torch.from_numpy(edges).to(torch.float32).div_(255.0).expand(3, -1, -1)
        ctx.progress(i + 1, video.num_frames)
    return Video(frames=out, fps=video.fps)


@node("to_grayscale", category="preprocess", output="video")
def to_grayscale(video: Video) -> Video:
    """Convert frames to gray (BT.601 luma), kept as three equal channels so RGB consumers take them.

    Args:
        video: RGB (or already single-channel) frames.
    """
    import torch

    _rgb(video, "video")
    frames = video.frames.float()
    if frames.shape[1] == 3:
        weights = torch.tensor(_LUMA, dtype=frames.dtype, device=frames.device).view(1, 3, 1, 1)
        frames = (frames * weights).sum(dim=1, keepdim=True)
    return Video(frames=frames.expand(-1, 3, -1, -1).contiguous(), fps=video.fps)


@node("resize_video", category="preprocess", output="video")
def resize_video(
    video: Video,
    height: Annotated[int, Field(ge=1, le=16384)],
    width: Annotated[int, Field(ge=1, le=16384)],
    mode: Literal["bilinear", "bicubic", "area", "nearest"] = "bilinear",
    ctx: RunContext = None,  # type: ignore[assignment]  # the engine always passes it; direct calls may omit it
) -> Video:
    """Resize every frame to ``height`` x ``width`` (no cropping; the aspect ratio may change).

    Bilinear and bicubic are antialiased when shrinking; ``nearest`` keeps hard edges (edge maps, masks).
    A result too large for ``--max-memory`` is refused (``too_large``, naming the side that grows most).

    Args:
        video: the frames to resize.
        height: new height in pixels.
        width: new width in pixels.
        mode: the interpolation.
    """
    import torch

    if (video.height, video.width) == (height, width):
        return video
    n, c = int(video.frames.shape[0]), int(video.frames.shape[1])
    grows = "height" if height * video.width >= width * video.height else "width"
    if ctx is not None:
        check_tensor_memory(ctx, (n, c, height, width), 4, f"resizing {n} frames to {width}x{height}", grows,
                            copies=2)  # the interpolated frames and their clamped copy
    frames = video.frames.float()
    kwargs = {"antialias": True, "align_corners": False} if mode in ("bilinear", "bicubic") else {}
    resized = torch.nn.functional.interpolate(frames, size=(height, width), mode=mode, **kwargs)
    return Video(frames=resized.clamp(0, 1), fps=video.fps)
