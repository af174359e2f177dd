"""Track one coloured object through a clip: HSV thresholds per candidate colour, centroid path, direction.

An honest text-video alignment metric for the toy world of ``shapes_dataset``: does the generated clip show
the prompted colour, moving the prompted way? No learnt model is involved, so the metric cannot be fooled by
a model that shares its biases.

Per frame, a pixel belongs to a colour when its saturation and value pass ``min_saturation`` /
``min_value`` and its hue lies in that colour's range. The detected colour is the candidate with the most
such pixels over the clip. Its centroid is taken in every frame with at least ``min_pixels`` pixels; a
least-squares line through the centroids against the frame index gives the velocity, and the dominant axis
and sign of the displacement over the clip give the direction (``none`` below ``min_shift`` pixels).

torch is imported lazily, so importing this module stays cheap.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["HUE_RANGES", "Track", "aspect", "parse_prompt", "rgb_to_hsv", "track"]

#: Colour name -> hue ranges in degrees, [lo, hi) each; red wraps around 0.
HUE_RANGES: dict[str, tuple[tuple[float, float], ...]] = {
    "red": ((0.0, 20.0), (340.0, 360.0)),
    "yellow": ((40.0, 75.0),),
    "green": ((90.0, 160.0),),
    "blue": ((200.0, 260.0),),
}
_DIRECTION_WORDS = ("left", "right", "up", "down")


@dataclass(frozen=True)
class Track:
    """What the tracker saw in a clip.

    ``colour`` is ``"none"`` when no candidate colour has pixels; ``direction`` is ``"none"`` when the object
    moved less than ``min_shift`` pixels or was found in fewer than two frames. ``path`` holds the centroid
    ``(x, y)`` of every frame, ``None`` where the object was not found. ``confidence`` in [0, 1] is the
    product of the fraction of frames where the object was found, the colour's share of all candidate-colour
    pixels, and the dominant axis's share of the motion (``|major| / (|major| + |minor|)``).
    """

    colour: str
    direction: str
    confidence: float
    displacement: tuple[float, float]
    path: tuple[tuple[float, float] | None, ...]
    pixels: dict[str, int] = field(default_factory=dict)


def rgb_to_hsv(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hue in degrees [0, 360), saturation and value in [0, 1] of RGB ``frames`` ``[..., 3, H, W]`` in [0, 1]."""
    import torch

    rgb = frames.clamp(0.0, 1.0).to(torch.float32)
    r, g, b = rgb.unbind(-3)
    value, argmax = rgb.max(dim=-3)
    low = rgb.min(dim=-3).values
    chroma = value - low
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue_r = ((g - b) / safe) % 6.0
    hue_g = (b - r) / safe + 2.0
    hue_b = (r - g) / safe + 4.0
    hue = torch.where(argmax == 0, hue_r, torch.where(argmax == 1, hue_g, hue_b)) * 60.0
    hue = torch.where(chroma > 0, hue, torch.zeros_like(hue)) % 360.0
    saturation = torch.where(value > 0, chroma / torch.where(value > 0, value, torch.ones_like(value)),
                             torch.zeros_like(value))
    return hue, saturation, value


def _mask(hue: torch.Tensor, ok: torch.Tensor, colour: str) -> torch.Tensor:
    import torch

    inside = torch.zeros_like(ok)
    for lo, hi in HUE_RANGES[colour]:
        inside |= (hue >= lo) & (hue < hi)
    return inside & ok


def _slope(ts: list[float], vs: list[float]) -> float:
    """Least-squares slope of ``vs`` against ``ts`` (at least two points)."""
    mt, mv = sum(ts) / len(ts), sum(vs) / len(vs)
    den = sum((t - mt) ** 2 for t in ts)
    return sum((t - mt) * (v - mv) for t, v in zip(ts, vs, strict=True)) / den


def track(frames: torch.Tensor, colours: tuple[str, ...] = tuple(HUE_RANGES), min_saturation: float = 0.45,
          min_value: float = 0.35, min_pixels: int = 3, min_shift: float = 3.0) -> Track:
    """Find the dominant candidate colour in ``frames`` ``[F, 3, H, W]`` (in [0, 1]) and its motion.

    ``colours`` are names from ``HUE_RANGES``. The displacement is the fitted velocity times ``F - 1``
    frames, in pixels, ``(dx, dy)`` with y downwards.
    """
    unknown = [c for c in colours if c not in HUE_RANGES]
    if unknown or not colours:
        raise ValueError(f"unknown colours {unknown}; choose from {', '.join(HUE_RANGES)}")
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be [F, 3, H, W], got {tuple(frames.shape)}")
    hue, sat, val = rgb_to_hsv(frames)
    ok = (sat >= min_saturation) & (val >= min_value)
    masks = {c: _mask(hue, ok, c) for c in colours}
    pixels = {c: int(m.sum()) for c, m in masks.items()}
    total = sum(pixels.values())
    count = int(frames.shape[0])
    best = max(colours, key=lambda c: (pixels[c], -colours.index(c)))
    if pixels[best] == 0:
        return Track("none", "none", 0.0, (0.0, 0.0), (None,) * count, pixels)
    import torch

    mask = masks[best].to(torch.float32)
    height, width = int(frames.shape[2]), int(frames.shape[3])
    ys = torch.arange(height, dtype=torch.float32).view(1, height, 1)
    xs = torch.arange(width, dtype=torch.float32).view(1, 1, width)
    per_frame = mask.sum(dim=(1, 2))
    cx = (mask * xs).sum(dim=(1, 2)) / per_frame.clamp(min=1)
    cy = (mask * ys).sum(dim=(1, 2)) / per_frame.clamp(min=1)
    path: list[tuple[float, float] | None] = []
    for f in range(count):
        found = float(per_frame[f]) >= min_pixels
        path.append((float(cx[f]), float(cy[f])) if found else None)
    seen = [(f, p) for f, p in enumerate(path) if p is not None]
    share = pixels[best] / total
    if len(seen) < 2:
        return Track(best, "none", 0.0, (0.0, 0.0), tuple(path), pixels)
    ts = [float(f) for f, _ in seen]
    dx = _slope(ts, [p[0] for _, p in seen]) * (count - 1)
    dy = _slope(ts, [p[1] for _, p in seen]) * (count - 1)
    major, minor = (abs(dx), abs(dy)) if abs(dx) >= abs(dy) else (abs(dy), abs(dx))
    if major < min_shift:
        direction = "none"
        dominance = 0.0
    else:
        direction = ("right" if dx > 0 else "left") if abs(dx) >= abs(dy) else ("down" if dy > 0 else "up")
        dominance = major / (major + minor)
    confidence = len(seen) / count * share * dominance
    return Track(best, direction, confidence, (dx, dy), tuple(path), pixels)


def parse_prompt(prompt: str) -> tuple[str | None, str | None]:
    """The first known colour word and the first direction word in ``prompt`` (``None`` where absent)."""
    words = re.findall(r"[a-z]+", prompt.lower())
    colour = next((w for w in words if w in HUE_RANGES), None)
    direction = next((w for w in words if w in _DIRECTION_WORDS), None)
    return colour, direction


def aspect(frames: torch.Tensor, colour: str | None = None, min_saturation: float = 0.45, min_value: float = 0.35,
           min_pixels: int = 3) -> float:
    """The width-to-height ratio of the object of ``colour`` (default: the dominant candidate colour) in
    ``frames`` ``[F, 3, H, W]``: the median, over the frames where it has ``min_pixels`` pixels, of
    ``sqrt(var(x) / var(y))`` of its pixels' coordinates (1.0 for a disc or a square, about 0.87 for the
    world's upward triangle, 3.0 for a 12 x 4 horizontal bar; 0.0 when no frame has the object). Pixels are
    chosen as ``track`` chooses them.

    It tells the ``bar`` concept (``shapes_dataset.CONCEPT_SHAPES``) from the world's compact shapes; the
    threshold used with it is in docs/default_model.md."""
    import statistics

    import torch

    hue, sat, val = rgb_to_hsv(frames)
    ok = (sat >= min_saturation) & (val >= min_value)
    if colour is None:
        colour = max(HUE_RANGES, key=lambda c: int(_mask(hue, ok, c).sum()))
    mask = _mask(hue, ok, colour).to(torch.float32)
    height, width = int(frames.shape[2]), int(frames.shape[3])
    ys = torch.arange(height, dtype=torch.float32).view(height, 1)
    xs = torch.arange(width, dtype=torch.float32).view(1, width)
    ratios = []
    for m in mask:
        n = float(m.sum())
        if n < min_pixels:
            continue
        mx, my = float((m * xs).sum()) / n, float((m * ys).sum()) / n
        var_x = float((m * (xs - mx) ** 2).sum()) / n
        var_y = float((m * (ys - my) ** 2).sum()) / n
        ratios.append((var_x / max(var_y, 1e-6)) ** 0.5)
    return statistics.median(ratios) if ratios else 0.0
