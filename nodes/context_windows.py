"""Sliding temporal context windows: run the UNet3D on a bounded number of frames at a time.

A UNet3D's activations (and its temporal attention) grow with the number of frames it sees, so a long clip
may not fit in memory in one call, and a model trained on 16 frames degrades on 64. With context windows a
sampler evaluates the model on overlapping windows of ``context_frames`` frames and averages the overlapping
predictions into one prediction for the whole clip, then takes one scheduler step on the whole clip. Memory
of a step is then bounded by the window, and temporal coherence across windows comes from the overlap.

An AnimateDiff UNet (``UNetMotionModel``) needs them beyond a bound: its motion modules carry positional
encodings for ``motion_max_seq_length`` frames (often 32) and were trained on 16, so the samplers refuse a UNet
call on more frames than that (naming ``frames`` or ``context_frames``) and windows of 16 are its long-clip mode.
FreeNoise-style noise re-use across windows was measured here (``bench/freenoise_seams.py``) and did not reduce
seams, so it is not offered.

The window schedule is the one the tiled VAE uses for space (:func:`reelgraph.nodes.vae_tiling.tile_spans`):
windows start every ``context_frames - overlap`` frames and the last one is moved back to end at the last
frame, so every window has full length, every frame is covered and neighbours share at least ``overlap``
frames. ``context_frames >= frames`` (or ``None``) gives a single window: the sampler then runs exactly the
windowless loop.

Fuse weights: ``flat`` averages overlapping predictions equally; ``pyramid`` weights a window's frames
``1, 2, ..., k, ..., 2, 1`` (highest in its middle), so each frame trusts most the window in which it has
the most temporal context, and seams fade instead of switching.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from .vae_tiling import tile_spans

if TYPE_CHECKING:
    import torch

__all__ = [
    "CONTEXT_FUSES",
    "ContextFrames",
    "ContextFuse",
    "ContextOverlap",
    "ContextWindowError",
    "context_windows",
    "fuse_predictions",
    "fuse_weights",
]

#: How overlapping window predictions are averaged (see the module docstring).
ContextFuse = Literal["flat", "pyramid"]
CONTEXT_FUSES: tuple[str, ...] = ("flat", "pyramid")
#: Node input types shared by every node that takes context windows.
ContextFrames = Annotated[int, Field(ge=1, le=4096)] | None
ContextOverlap = Annotated[int, Field(ge=0, le=4095)]

#: ``predict(index, start, stop)``: the model's prediction ``[B, C, stop - start, h, w]`` for one window.
WindowPredict = Callable[[int, int, int], "torch.Tensor"]


class ContextWindowError(ValueError):
    """A context-window setting that cannot work; ``input`` names the offending setting."""

    def __init__(self, message: str, input: str) -> None:
        super().__init__(message)
        self.input = input


def context_windows(frames: int, context_frames: int | None, overlap: int = 4,
                    fuse: str = "pyramid") -> list[tuple[int, int]]:
    """``(start, stop)`` of the temporal windows covering ``frames`` frames, in order.

    ``context_frames`` ``None`` or ``>= frames`` gives the single window ``[(0, frames)]``. Otherwise every
    window has ``context_frames`` frames, neighbours share at least ``overlap`` frames and the last window
    ends at ``frames``. ``fuse`` is only checked here, so that every setting is refused in one place.
    Raises ``ContextWindowError`` naming the setting that is wrong.
    """
    if fuse not in CONTEXT_FUSES:
        raise ContextWindowError(f"context_fuse must be one of {CONTEXT_FUSES}, got {fuse!r}", "context_fuse")
    if frames < 1:
        raise ContextWindowError(f"need at least one frame, got {frames}", "frames")
    if context_frames is None:
        return [(0, frames)]
    if context_frames < 1:
        raise ContextWindowError(f"context_frames must be >= 1 (or empty for no windows), got {context_frames}",
                                 "context_frames")
    if not 0 <= overlap < context_frames:
        raise ContextWindowError(f"context_overlap={overlap} must be >= 0 and smaller than context_frames="
                                 f"{context_frames}; a quarter to a half of it is usual", "context_overlap")
    return tile_spans(frames, context_frames, overlap)


def fuse_weights(length: int, fuse: str) -> torch.Tensor:
    """The per-frame weights ``[length]`` (float32, all positive) of one window's prediction."""
    import torch

    if fuse == "flat":
        return torch.ones(length, dtype=torch.float32)
    if fuse == "pyramid":
        pos = torch.arange(length, dtype=torch.float32)
        return torch.minimum(pos + 1, length - pos)
    raise ContextWindowError(f"context_fuse must be one of {CONTEXT_FUSES}, got {fuse!r}", "context_fuse")


def fuse_predictions(predict: WindowPredict, windows: list[tuple[int, int]], fuse: str) -> torch.Tensor:
    """Evaluate ``predict`` on every window and return the weighted average over the whole clip.

    Each frame's result is ``sum_w weight_w(f) * pred_w(f) / sum_w weight_w(f)`` over the windows ``w``
    holding it, accumulated in float32 and returned in the predictions' dtype. Only one window's prediction
    is alive at a time besides the accumulator, so memory is bounded by the window.
    """
    import torch

    frames = max(stop for _, stop in windows)
    total: torch.Tensor | None = None
    norm = torch.zeros(frames, dtype=torch.float32)
    dtype = None
    for index, (start, stop) in enumerate(windows):
        pred = predict(index, start, stop)
        if total is None:
            b, c, _, h, w = pred.shape
            total = torch.zeros((b, c, frames, h, w), dtype=torch.float32, device=pred.device)
            dtype = pred.dtype
        weights = fuse_weights(stop - start, fuse)
        total[:, :, start:stop] += pred.float() * weights.to(pred.device).view(1, 1, -1, 1, 1)
        norm[start:stop] += weights
    assert total is not None, "no windows"
    if bool((norm == 0).any()):
        raise ValueError("the windows do not cover every frame")
    return (total / norm.to(total.device).view(1, 1, -1, 1, 1)).to(dtype)
