"""A procedural dataset of captioned clips: one coloured shape moving over a plain, lightly textured background.

This is the toy world the default ``builtin:tiny`` model is trained on (see ``tools/train_tiny.py`` and
``docs/default_model.md``), and the ground truth the ``track_object`` metric is tested against. Nothing is
downloaded: every clip is drawn from its index and the dataset seed, so ``make_clip(seed, i)`` gives the same
pixels on every machine (CPU float32 arithmetic only).

A clip is ``frames`` frames of ``size x size`` RGB in ``[0, 1]`` (default 8 frames of 32x32, which the tiny
VAE's factor 4 turns into 8x8 latents). The shape (circle, square or triangle, about 10 pixels across) crosses
the frame at ``speed`` pixels per frame in one of four directions, along the centre line and fully inside the
frame; the background is a dark grey
with a faint static texture, grey so it never passes the tracker's saturation threshold. The caption reads
``"a red circle moving left"``.

torch is imported lazily, so importing this module stays cheap.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["COLOURS", "CONCEPT_SHAPES", "DIRECTIONS", "SHAPES", "Clip", "caption", "clip_params", "concept_clip",
           "find_clips", "make_batch", "make_clip", "render_clip"]

#: Colour name -> RGB in [0, 1]. Hues are 0, 120, 240 and 55 degrees, far apart for the tracker.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.92, 0.12, 0.10),
    "green": (0.12, 0.80, 0.18),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.88, 0.12),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
#: Shapes outside the training world of ``builtin:tiny`` (never drawn by ``clip_params``): the concepts a LoRA
#: teaches it (``tools/train_companions.py``). A ``bar`` is a horizontal 12 x 4 pixel rectangle.
CONCEPT_SHAPES: tuple[str, ...] = ("bar",)
#: Direction name -> unit step (dx, dy) in image coordinates (y grows downwards).
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}

_RADIUS = 5.0
#: Half width and half height of a ``bar`` in pixels: as wide as the motion allows (it touches the frame's edge at
#: the extreme starts), thin enough that the tiny VAE keeps it elongated.
_BAR_HALF = (6.0, 2.0)


@dataclass(frozen=True)
class Clip:
    """The parameters of one clip: what moves where, and the background it moves over."""

    colour: str
    shape: str
    direction: str
    start: tuple[float, float]
    speed: float
    background: float
    texture_seed: int

    @property
    def caption(self) -> str:
        """``"a <colour> <shape> moving <direction>"``."""
        return caption(self.colour, self.shape, self.direction)

    def centre(self, frame: int) -> tuple[float, float]:
        """The shape's centre ``(x, y)`` in pixels at ``frame``."""
        dx, dy = DIRECTIONS[self.direction]
        return self.start[0] + dx * self.speed * frame, self.start[1] + dy * self.speed * frame


def caption(colour: str, shape: str, direction: str) -> str:
    """The caption of a clip: ``"a red circle moving left"``."""
    return f"a {colour} {shape} moving {direction}"


def clip_params(seed: int, index: int, frames: int = 8, size: int = 32) -> Clip:
    """Draw the parameters of clip ``index`` of the dataset ``seed``, deterministically.

    Colour, shape and direction are uniform. The shape crosses the frame: the speed is 2.3 to 2.7 pixels per
    frame, so the path spans most of the frame, starting near the edge it moves away from (uniform over the
    starts that keep the whole path, shape included, inside); across the motion it stays within 2 pixels of
    the centre line. Where the shape is in each frame thus follows from the caption, which is what lets a
    model this small learn the direction words (see docs/default_model.md).
    """
    rng = random.Random(f"shapes:{seed}:{index}")
    colour = rng.choice(sorted(COLOURS))
    shape = rng.choice(SHAPES)
    direction = rng.choice(sorted(DIRECTIONS))
    speed = rng.uniform(2.3, 2.7)
    travel = speed * (frames - 1)
    margin = _RADIUS + 1.0
    if travel > size - 1 - 2 * margin:
        raise ValueError(f"a {size}-pixel frame is too small for {frames} frames at {speed:.2f} px/frame")
    dx, dy = DIRECTIONS[direction]
    centre = (size - 1) / 2

    def coordinate(step: int) -> float:
        if step == 0:
            return centre + rng.uniform(-2.0, 2.0)
        lo, hi = margin, size - 1 - margin
        if step > 0:
            hi -= travel
        else:
            lo += travel
        return rng.uniform(lo, hi)

    start = (coordinate(dx), coordinate(dy))
    background = rng.uniform(0.12, 0.35)
    return Clip(colour, shape, direction, start, speed, background, rng.randrange(2**31))


def _coverage(shape: str, x: torch.Tensor, y: torch.Tensor, cx: float, cy: float) -> torch.Tensor:
    """Anti-aliased coverage in [0, 1] of ``shape`` centred at ``(cx, cy)`` at pixel centres ``(x, y)``."""
    import torch

    u, v = x - cx, y - cy
    if shape == "circle":
        dist = torch.sqrt(u * u + v * v) - _RADIUS
    elif shape == "square":
        dist = torch.maximum(u.abs(), v.abs()) - _RADIUS * 0.85
    elif shape == "triangle":
        # An upward isosceles triangle: the maximum of the three edges' signed distances.
        r = _RADIUS * 1.1
        base = v - r * 0.8
        left = (-0.894 * u - 0.447 * v) - r * 0.45
        right = (0.894 * u - 0.447 * v) - r * 0.45
        dist = torch.maximum(base, torch.maximum(left, right))
    elif shape == "bar":
        dist = torch.maximum(u.abs() - _BAR_HALF[0], v.abs() - _BAR_HALF[1])
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES + CONCEPT_SHAPES)}")
    return (0.5 - dist).clamp(0.0, 1.0)


def render_clip(clip: Clip, frames: int = 8, size: int = 32) -> torch.Tensor:
    """Render ``clip`` as float32 frames ``[F, 3, H, W]`` in [0, 1]."""
    import torch

    gen = torch.Generator("cpu").manual_seed(clip.texture_seed)
    # A faint low-frequency grey texture: 4x4 noise upsampled bilinearly, +-0.04 around the base level.
    noise = torch.rand((1, 1, 4, 4), generator=gen) * 0.08 - 0.04
    texture = torch.nn.functional.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    background = (clip.background + texture).clamp(0.0, 1.0)
    coords = torch.arange(size, dtype=torch.float32)
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    colour = torch.tensor(COLOURS[clip.colour], dtype=torch.float32).view(3, 1, 1)
    out = torch.empty((frames, 3, size, size), dtype=torch.float32)
    for f in range(frames):
        cx, cy = clip.centre(f)
        alpha = _coverage(clip.shape, x, y, cx, cy)
        out[f] = background * (1 - alpha) + colour * alpha
    return out


def make_clip(seed: int, index: int, frames: int = 8, size: int = 32) -> tuple[torch.Tensor, Clip]:
    """Clip ``index`` of dataset ``seed``: its frames ``[F, 3, H, W]`` and its parameters (with the caption)."""
    clip = clip_params(seed, index, frames, size)
    return render_clip(clip, frames, size), clip


def make_batch(seed: int, start: int, count: int, frames: int = 8,
               size: int = 32) -> tuple[torch.Tensor, list[Clip]]:
    """Clips ``start .. start + count - 1`` stacked as ``[B, F, 3, H, W]``, with their parameters."""
    import torch

    pairs = [make_clip(seed, start + i, frames, size) for i in range(count)]
    return torch.stack([p[0] for p in pairs]), [p[1] for p in pairs]


def find_clips(seed: int, colour: str, shape: str, direction: str, count: int = 1, frames: int = 8,
               size: int = 32) -> list[tuple[torch.Tensor, Clip]]:
    """The first ``count`` clips of dataset ``seed`` showing ``colour shape moving direction``, as
    ``make_clip`` gives them (held-out examples: use a seed the training run does not draw from)."""
    found, index = [], 0
    while len(found) < count:
        clip = clip_params(seed, index, frames, size)
        if (clip.colour, clip.shape, clip.direction) == (colour, shape, direction):
            found.append((render_clip(clip, frames, size), clip))
        index += 1
    return found


def concept_clip(seed: int, index: int, shape: str, colour: str | None = None, direction: str | None = None,
                 frames: int = 8, size: int = 32) -> tuple[torch.Tensor, Clip]:
    """The ``index``-th clip of dataset ``seed`` (counting only those moving ``direction``, where given) with its
    shape replaced by ``shape`` (e.g. a ``CONCEPT_SHAPES`` one) and its colour by ``colour`` (where given): its
    frames and parameters. Start, speed and background are the world's, so a concept clip crosses the frame as
    the world's clips do."""
    import dataclasses

    seen, j = -1, 0
    while True:
        clip = clip_params(seed, j, frames, size)
        if direction is None or clip.direction == direction:
            seen += 1
            if seen == index:
                break
        j += 1
    clip = dataclasses.replace(clip, shape=shape, colour=colour or clip.colour)
    return render_clip(clip, frames, size), clip
