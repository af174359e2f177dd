"""Node: ``track_object``, the colour-and-direction alignment metric for the coloured-shapes world."""

from __future__ import annotations

from typing import Annotated, NamedTuple

from pydantic import Field

from reelgraph import NodeInputError, node

from .metrics import Metric
from .values import Video

Label = Annotated[str, Field(max_length=200)]
Unit = Annotated[float, Field(ge=0.0, le=1.0)]


class TrackedObject(NamedTuple):
    """The detected colour and direction, how sure the tracker is, whether they match the prompt, and a Metric."""

    colour: str
    direction: str
    confidence: float
    match: bool
    metric: Metric


@node("track_object", category="metrics")
def track_object(
    video: Video,
    prompt: str = "",
    colours: Annotated[str, Field(max_length=200)] = "red,green,blue,yellow",
    min_saturation: Unit = 0.45,
    min_value: Unit = 0.35,
    min_pixels: Annotated[int, Field(ge=1, le=100000)] = 3,
    min_shift: Annotated[float, Field(ge=0.0, le=10000.0)] = 3.0,
    label: Label = "",
) -> TrackedObject:
    """Find the dominant coloured object in each frame, its centroid path and its direction of motion.

    Per frame, pixels whose saturation and value pass the thresholds are assigned to the candidate colour
    whose hue range holds their hue; the colour with the most pixels over the clip is the detected one. A
    least-squares line through its per-frame centroids gives the displacement over the clip; its dominant
    axis and sign give ``left``/``right``/``up``/``down`` (``none`` when it moved less than ``min_shift``
    pixels). ``confidence`` is (frames where found / frames) x (colour's share of candidate pixels) x
    (dominant axis's share of the motion).

    With a ``prompt`` such as ``"a red circle moving left"``, ``match`` is true when the detected colour and
    direction are the ones it names, and the Metric's value is 1.0 or 0.0; without one, ``match`` is false
    and the Metric's value is the confidence.

    Args:
        video: the clip to judge.
        prompt: the text the clip should show; its first colour and direction words are checked.
        colours: comma-separated candidate colours among red, green, blue and yellow.
        min_saturation: a pixel's HSV saturation must be at least this to count.
        min_value: a pixel's HSV value (brightness) must be at least this to count.
        min_pixels: a frame needs this many pixels of the colour for a centroid.
        min_shift: below this displacement in pixels over the clip, the direction is ``none``.
        label: the name in reports (default ``track_object``).
    """
    from .tracking import HUE_RANGES, parse_prompt, track

    names = tuple(c.strip().lower() for c in colours.split(",") if c.strip())
    unknown = [c for c in names if c not in HUE_RANGES]
    if unknown or not names:
        raise NodeInputError(f"unknown colours {unknown}; choose from {', '.join(HUE_RANGES)}", input="colours")
    result = track(video.frames, names, min_saturation=min_saturation, min_value=min_value,
                   min_pixels=min_pixels, min_shift=min_shift)
    want_colour, want_direction = parse_prompt(prompt) if prompt else (None, None)
    if prompt and want_colour is None and want_direction is None:
        raise NodeInputError(f"the prompt {prompt!r} names no colour ({', '.join(HUE_RANGES)}) and no direction "
                             "(left, right, up, down)", input="prompt")
    match = bool(prompt) and (want_colour in (None, result.colour)) and (want_direction in (None, result.direction))
    value = (1.0 if match else 0.0) if prompt else result.confidence
    path = [list(p) if p is not None else None for p in result.path]
    details = {"colour": result.colour, "direction": result.direction, "confidence": result.confidence,
               "displacement": list(result.displacement), "path": path, "pixels": result.pixels,
               "prompt": prompt, "expected_colour": want_colour, "expected_direction": want_direction,
               "min_saturation": min_saturation, "min_value": min_value, "min_pixels": min_pixels,
               "min_shift": min_shift}
    scale = "1 = matches the prompt, 0 = does not" if prompt else "confidence, 0 to 1"
    metric = Metric(label or "track_object", value, details=details, scale=scale)
    return TrackedObject(result.colour, result.direction, result.confidence, match, metric)
