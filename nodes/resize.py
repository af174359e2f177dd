"""Classical resizing of frame stacks ``[N, C, H, W]``: nearest, bilinear, bicubic and Lanczos.

The filtered methods are separable resampling with the kernel stretched by the shrink factor when
downscaling (antialiasing), the scheme Pillow uses and ``torch.nn.functional.interpolate(...,
antialias=True)`` copies: output pixel ``i`` is centred on input coordinate ``(i + 0.5) * in / out``, taps
outside the image are dropped and the remaining weights renormalised. Each axis becomes one dense weight
matrix, so a resize is two matrix products. Bicubic uses Keys' kernel with ``a = -0.5``, Lanczos three
lobes. ``nearest`` takes input pixel ``floor((i + 0.5) * in / out)``, computed in integers, so an
integer upscale factor repeats every pixel exactly (the right choice for masks and labels).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["METHODS", "resize", "target_size", "workspace_bytes"]

#: Resampling methods ``resize`` understands.
METHODS: tuple[str, ...] = ("nearest", "bilinear", "bicubic", "lanczos")

ProgressFn = Callable[[int, int], None]

# Kernel support (radius in input pixels at scale 1) of each filtered method.
_SUPPORT = {"bilinear": 1.0, "bicubic": 2.0, "lanczos": 3.0}


def target_size(height: int, width: int, factor: float | None = None, new_height: int | None = None,
                new_width: int | None = None) -> tuple[int, int]:
    """The output size for a scale ``factor`` or a target ``new_height``/``new_width``.

    Give either ``factor`` or at least one side; one side alone keeps the aspect ratio. Sizes are rounded
    to the nearest pixel and at least 1. Raises ``ValueError`` when both or neither are given.
    """
    if factor is not None and (new_height is not None or new_width is not None):
        raise ValueError("give either factor or height/width, not both")
    if factor is not None:
        if not factor > 0:
            raise ValueError(f"factor must be positive, got {factor}")
        return max(1, round(height * factor)), max(1, round(width * factor))
    if new_height is None and new_width is None:
        raise ValueError("give a factor or a target height and/or width")
    if new_height is None:
        new_height = max(1, round(height * new_width / width))
    if new_width is None:
        new_width = max(1, round(width * new_height / height))
    return int(new_height), int(new_width)


def workspace_bytes(channels: int, in_h: int, in_w: int, height: int, width: int, chunk_frames: int = 8) -> int:
    """Bytes ``resize`` needs besides its ``[N, C, height, width]`` float32 result: one chunk's intermediate
    products and the two axes' weight matrices (built in float64)."""
    chunk = max(1, int(chunk_frames)) * int(channels)
    products = chunk * int(height) * (int(in_w) + int(width)) * 4
    weights = 6 * 8 * (int(height) * int(in_h) + int(width) * int(in_w))
    return products + weights


def resize(frames: torch.Tensor, height: int, width: int, method: str = "bicubic", chunk_frames: int = 8,
           progress: ProgressFn | None = None) -> torch.Tensor:
    """Resize ``frames`` ``[N, C, H, W]`` to ``[N, C, height, width]`` (float32, not clamped).

    ``method`` is one of ``METHODS``. Frames are processed ``chunk_frames`` at a time;
    ``progress(frames_done, frames)`` is called after each chunk.
    """
    import torch

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if frames.ndim != 4:
        raise ValueError(f"frames must be [N, C, H, W], got shape {tuple(frames.shape)}")
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got {height}x{width}")
    frames = frames.to(dtype=torch.float32)
    n, c, in_h, in_w = (int(s) for s in frames.shape)
    out = torch.empty((n, c, height, width), dtype=torch.float32, device=frames.device)
    if method == "nearest":
        rows = _nearest_index(in_h, height).to(frames.device)
        cols = _nearest_index(in_w, width).to(frames.device)
    else:
        wy = _weights(in_h, height, method).to(frames.device)
        wx = _weights(in_w, width, method).to(frames.device)
    step = max(1, int(chunk_frames))
    for start in range(0, n, step):
        stop = min(start + step, n)
        x = frames[start:stop]
        if method == "nearest":
            out[start:stop] = x.index_select(2, rows).index_select(3, cols)
        else:
            out[start:stop] = wy @ x @ wx.T
        if progress is not None:
            progress(stop, n)
    return out


def _nearest_index(size_in: int, size_out: int) -> torch.Tensor:
    """Source index ``floor((i + 0.5) * in / out)`` of each output pixel, in exact integer arithmetic."""
    import torch

    i = torch.arange(size_out, dtype=torch.int64)
    return ((2 * i + 1) * size_in // (2 * size_out)).clamp_(max=size_in - 1)


def _kernel(method: str, x: torch.Tensor) -> torch.Tensor:
    """The resampling kernel of ``method`` evaluated at offsets ``x`` (in kernel units)."""
    import torch

    ax = x.abs()
    if method == "bilinear":
        return (1 - ax).clamp(min=0)
    if method == "bicubic":
        a = -0.5
        near = ((a + 2) * ax - (a + 3)) * ax * ax + 1
        far = ((a * ax - 5 * a) * ax + 8 * a) * ax - 4 * a
        return torch.where(ax <= 1, near, torch.where(ax < 2, far, torch.zeros_like(ax)))
    lobes = _SUPPORT["lanczos"]
    return torch.where(ax < lobes, torch.sinc(x) * torch.sinc(x / lobes), torch.zeros_like(ax))


def _weights(size_in: int, size_out: int, method: str) -> torch.Tensor:
    """The ``[size_out, size_in]`` matrix of one axis: each row holds one output pixel's normalised taps."""
    import torch

    scale = size_in / size_out
    stretch = max(scale, 1.0)  # widen the kernel when shrinking: the antialiasing low-pass
    centre = (torch.arange(size_out, dtype=torch.float64) + 0.5) * scale
    source = torch.arange(size_in, dtype=torch.float64) + 0.5
    offsets = (source[None, :] - centre[:, None]) / stretch
    weights = _kernel(method, offsets)
    weights = torch.where(offsets.abs() < _SUPPORT[method], weights, torch.zeros_like(weights))
    total = weights.sum(dim=1, keepdim=True)
    if bool((total.abs() < 1e-12).any()):  # cannot happen for these kernels; guard against silent NaNs
        raise ValueError(f"resize {size_in} -> {size_out} with {method} left an output pixel without taps")
    return (weights / total).to(torch.float32)
