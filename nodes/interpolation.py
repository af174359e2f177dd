"""Frame interpolation in pixel space: a cross-fade baseline and optical-flow warping.

``interpolate`` turns ``N`` frames into ``(N - 1) * m + 1``: the originals sit unchanged at every ``m``-th
position and ``m - 1`` new frames at times ``t = k / m`` fill each gap.

The ``flow`` method, for each pair of neighbours ``I0``, ``I1``:

1. estimates dense optical flow both ways, ``F01`` and ``F10``, with OpenCV's DIS (on luma), started from
   the global translation found by phase correlation; the flow of pixels found occluded in step 2 is then
   replaced by a smooth extension of their visible neighbours' flow;
2. marks occluded pixels with the forward-backward consistency test (Sundaram et al. 2010): a pixel of
   ``I0`` is not visible in ``I1`` when ``|F01(x) + F10(x + F01(x))|^2 > 0.01 (|F01|^2 + |F10|^2) + 0.5``,
   or when its flow leaves the frame; likewise for ``I1``;
3. turns each flow into a backward flow from time ``t`` by the fixed point ``Ft0(y) = -t F01(y + Ft0(y))``
   (and ``Ft1(y) = -(1 - t) F10(y + Ft1(y))``), which is exact for locally uniform motion, and warps both
   frames to time ``t`` with it;
4. blends the two warps with weights ``(1 - t) V0`` and ``t V1`` (as Super SloMo does), where ``V0`` says
   whether the content at ``y`` is visible in ``I0`` (``1 - `` the occlusion mask of ``I1`` carried to ``y``),
   so content that appears or disappears between the frames is taken from the one frame that shows it.

Importing this module imports nothing heavy: torch is imported inside the functions, numpy and OpenCV
(``opencv-python-headless``) only when ``flow`` runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = ["METHODS", "interpolate", "output_shape", "workspace_bytes"]

#: Interpolation methods ``interpolate`` understands.
METHODS: tuple[str, ...] = ("flow", "blend")

ProgressFn = Callable[[int, int], None]

# Fixed-point iterations turning a frame-to-frame flow into a backward flow from time t.
_FLOW_ITERATIONS = 3
# Below this total visibility weight a pixel is seen in neither frame; it falls back to a plain blend.
_MIN_WEIGHT = 1e-3
# Frames are upsampled for flow estimation until their short side reaches this (see ``_dense_flow``).
_FLOW_MIN_SIDE = 128


def output_shape(shape: tuple[int, ...], multiplier: int) -> tuple[int, int, int, int]:
    """The ``[(N - 1) * multiplier + 1, C, H, W]`` shape ``interpolate`` returns for frames of ``shape``."""
    n, c, h, w = (int(s) for s in shape)
    return (max(n - 1, 0) * int(multiplier) + 1, c, h, w)


def workspace_bytes(shape: tuple[int, ...], multiplier: int, method: str = "flow") -> int:
    """Bytes ``interpolate`` needs besides its float32 result, for one pair of frames at a time: the new
    frames of the pair (listed, then stacked) and, for ``flow``, the flows, masks and warps at frame size and
    the flow estimation at its upsampled size (an upper estimate)."""
    _, c, h, w = (int(s) for s in shape)
    pixels = h * w
    total = 2 * (int(multiplier) - 1) * c * pixels * 4
    if method == "flow":
        scale = 1
        while min(h, w) * scale < _FLOW_MIN_SIDE:
            scale *= 2
        total += 24 * max(c, 2) * pixels * 4 + 16 * pixels * scale * scale * 4
    return total


def interpolate(frames: torch.Tensor, multiplier: int, method: str = "flow",
                progress: ProgressFn | None = None) -> torch.Tensor:
    """Insert ``multiplier - 1`` frames between every pair of ``frames`` ``[N, C, H, W]`` (values in [0, 1]).

    Returns ``[(N - 1) * multiplier + 1, C, H, W]`` float32 on the CPU with ``frames[i]`` copied unchanged to position
    ``i * multiplier``. ``method`` is ``"flow"`` (optical-flow warping, see the module docstring) or
    ``"blend"`` (cross-fade ``(1 - t) I0 + t I1``). ``progress(pairs_done, pairs)`` runs after each pair.
    """
    import torch

    if multiplier < 1:
        raise ValueError(f"multiplier must be >= 1, got {multiplier}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if frames.ndim != 4:
        raise ValueError(f"frames must be [N, C, H, W], got shape {tuple(frames.shape)}")
    frames = frames.detach().to(device="cpu", dtype=torch.float32)
    n, c, h, w = (int(s) for s in frames.shape)
    m = int(multiplier)
    out = torch.empty(((n - 1) * m + 1, c, h, w), dtype=torch.float32)
    out[::m] = frames
    times = [k / m for k in range(1, m)]
    for i in range(n - 1):
        a, b = frames[i], frames[i + 1]
        if times:
            if method == "blend":
                mids = torch.stack([(1 - t) * a + t * b for t in times])
            else:
                mids = _flow_inbetweens(a, b, times)
            out[i * m + 1:(i + 1) * m] = mids
        if progress is not None:
            progress(i + 1, n - 1)
    return out


def _flow_inbetweens(a: torch.Tensor, b: torch.Tensor, times: list[float]) -> torch.Tensor:
    """The frames at ``times`` between ``a`` and ``b`` (``[C, H, W]`` each), by flow warping."""
    import numpy as np
    import torch

    img0 = np.ascontiguousarray(a.permute(1, 2, 0).numpy())
    img1 = np.ascontiguousarray(b.permute(1, 2, 0).numpy())
    gray0, gray1 = _luma_u8(img0), _luma_u8(img1)
    f01, f10 = _dense_flow(gray0, gray1), _dense_flow(gray1, gray0)
    occ0, occ1 = _occlusion(f01, f10), _occlusion(f10, f01)
    f01, f10 = _fill_occluded(f01, occ0), _fill_occluded(f10, occ1)
    mids = []
    for t in times:
        ft0, ft1 = _flow_from_time(f01, t), _flow_from_time(f10, 1 - t)
        warp0, warp1 = _warp(img0, ft0), _warp(img1, ft1)
        vis0 = 1 - _warp(occ1, ft1)  # content at y is visible in I0 unless I1's pixel there is occluded in I0
        vis1 = 1 - _warp(occ0, ft0)
        w0, w1 = (1 - t) * vis0, t * vis1
        total = w0 + w1
        plain = (1 - t) * warp0 + t * warp1
        mixed = (w0[..., None] * warp0 + w1[..., None] * warp1) / np.maximum(total, _MIN_WEIGHT)[..., None]
        mid = np.where((total > _MIN_WEIGHT)[..., None], mixed, plain)
        mids.append(torch.from_numpy(np.clip(mid, 0, 1).astype(np.float32)).permute(2, 0, 1))
    return torch.stack(mids)


def _luma_u8(img: np.ndarray) -> np.ndarray:
    """``[H, W, C]`` in [0, 1] -> 8-bit luma (BT.709 weights for 3 channels, the mean otherwise), as DIS wants."""
    import numpy as np

    luma = img @ np.array([0.2126, 0.7152, 0.0722], dtype=np.float32) if img.shape[2] == 3 else img.mean(axis=2)
    return np.ascontiguousarray(np.clip(luma * 255 + 0.5, 0, 255).astype(np.uint8))


def _dense_flow(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """DIS optical flow ``[H, W, 2]`` (dx, dy) such that ``src(x) ~ dst(x + flow(x))``.

    DIS refines coarse to fine, and its pyramid depth depends on the image size relative to its patch size,
    so on its own it loses motions beyond a few pixels on small frames. Two measures extend its range:
    frames are upsampled by a power of two until the short side reaches ``_FLOW_MIN_SIDE`` (the flow is
    scaled back), and DIS starts from the global translation that phase correlation finds, so a pan of
    a fifth of the frame is followed. The finest pyramid level is kept and patches overlap densely
    (stride 2); the synthetic-motion tests showed each of these to matter.
    """
    import cv2
    import numpy as np

    h, w = src.shape
    scale = 1
    while min(h, w) * scale < _FLOW_MIN_SIDE:
        scale *= 2
    if scale > 1:
        size = (w * scale, h * scale)
        src = cv2.resize(src, size, interpolation=cv2.INTER_CUBIC)
        dst = cv2.resize(dst, size, interpolation=cv2.INTER_CUBIC)
    window = cv2.createHanningWindow((src.shape[1], src.shape[0]), cv2.CV_32F)
    (dx, dy), _ = cv2.phaseCorrelate(src.astype(np.float32), dst.astype(np.float32), window)
    initial = np.empty((*src.shape, 2), dtype=np.float32)
    initial[..., 0], initial[..., 1] = dx, dy
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    dis.setFinestScale(0)
    dis.setPatchSize(8)
    dis.setPatchStride(2)
    flow = dis.calc(src, dst, initial)
    if scale > 1:
        flow = cv2.resize(flow, (w, h), interpolation=cv2.INTER_AREA) / scale
    return flow


def _grid(h: int, w: int) -> np.ndarray:
    """Pixel coordinates ``[H, W, 2]`` (x, y) as float32."""
    import numpy as np

    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([xs, ys], axis=-1)


def _warp(img: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Sample ``img`` (``[H, W]`` or ``[H, W, C]``) at ``x + flow(x)``, bilinear, edges replicated."""
    import cv2
    import numpy as np

    h, w = flow.shape[:2]
    coords = _grid(h, w) + flow
    mx, my = np.ascontiguousarray(coords[..., 0]), np.ascontiguousarray(coords[..., 1])
    if img.ndim == 2 or img.shape[2] <= 4:
        out = cv2.remap(img, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return out.reshape(img.shape)
    parts = [_warp(np.ascontiguousarray(img[..., i:i + 4]), flow) for i in range(0, img.shape[2], 4)]
    return np.concatenate(parts, axis=2)


def _occlusion(forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """1.0 where a pixel of the source frame is not visible in the other frame, else 0.0 (``[H, W]``).

    ``forward`` maps the source frame to the other one and ``backward`` the other way round.
    """
    import numpy as np

    h, w = forward.shape[:2]
    target = _grid(h, w) + forward
    outside = (target[..., 0] < 0) | (target[..., 0] > w - 1) | (target[..., 1] < 0) | (target[..., 1] > h - 1)
    back = _warp(backward, forward)
    error = np.sum((forward + back) ** 2, axis=-1)
    bound = 0.01 * (np.sum(forward**2, axis=-1) + np.sum(back**2, axis=-1)) + 0.5
    return ((error > bound) | outside).astype(np.float32)


def _fill_occluded(flow: np.ndarray, occluded: np.ndarray) -> np.ndarray:
    """Replace the flow of occluded pixels by a smooth extension of the visible pixels' flow.

    Where a pixel has no counterpart in the other frame, DIS's estimate is a guess; the motion of nearby
    visible content is a better one (a panning camera moves the entering strip like the rest). Normalized
    convolution with Gaussians of growing width fills every occluded pixel from its nearest visible ones.
    """
    import cv2

    visible = 1 - occluded
    todo = occluded > 0
    if not todo.any() or not visible.any():
        return flow
    filled = flow.copy()
    sigma = 2.0
    while todo.any():
        weight = cv2.GaussianBlur(visible, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
        total = cv2.GaussianBlur(flow * visible[..., None], (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
        ready = todo & (weight > 1e-3)
        filled[ready] = total[ready] / weight[ready, None]
        todo &= ~ready
        sigma *= 2
    return filled


def _flow_from_time(flow: np.ndarray, t: float) -> np.ndarray:
    """The backward flow from time ``t`` to the frame ``flow`` starts from: ``f(y) = -t flow(y + f(y))``."""
    f = -t * flow
    for _ in range(_FLOW_ITERATIONS):
        f = -t * _warp(flow, f)
    return f
