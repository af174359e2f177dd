"""The coloured-shapes dataset: deterministic from its seed, captions that say what the pixels show."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from reelgraph.nodes.shapes_dataset import (  # noqa: E402
    COLOURS,
    DIRECTIONS,
    SHAPES,
    caption,
    clip_params,
    find_clips,
    make_batch,
    make_clip,
)


def test_same_seed_and_index_give_identical_clips() -> None:
    a, pa = make_clip(3, 17)
    b, pb = make_clip(3, 17)
    assert pa == pb
    assert torch.equal(a, b)


def test_other_seed_or_index_gives_other_clips() -> None:
    base, _ = make_clip(3, 17)
    assert not torch.equal(base, make_clip(4, 17)[0])
    assert not torch.equal(base, make_clip(3, 18)[0])


def test_batch_equals_its_clips() -> None:
    batch, params = make_batch(5, 10, 3)
    assert batch.shape == (3, 8, 3, 32, 32)
    for i in range(3):
        frames, clip = make_clip(5, 10 + i)
        assert clip == params[i]
        assert torch.equal(batch[i], frames)


def test_clips_are_in_range_and_the_shape_stays_inside() -> None:
    for i in range(60):
        frames, clip = make_clip(0, i)
        assert frames.dtype == torch.float32 and frames.shape == (8, 3, 32, 32)
        assert float(frames.min()) >= 0.0 and float(frames.max()) <= 1.0
        for f in range(8):
            x, y = clip.centre(f)
            assert 5.0 < x < 26.0 and 5.0 < y < 26.0
            chroma = frames[f].amax(0) - frames[f].amin(0)
            assert int((chroma > 0.3).sum()) >= 30  # the whole shape is visible in every frame


def test_captions_name_colour_shape_and_direction() -> None:
    clip = clip_params(1, 2)
    assert clip.caption == caption(clip.colour, clip.shape, clip.direction)
    assert caption("red", "circle", "left") == "a red circle moving left"
    seen = {(c.colour, c.shape, c.direction) for c in (clip_params(0, i) for i in range(400))}
    assert {c for c, _, _ in seen} == set(COLOURS)
    assert {s for _, s, _ in seen} == set(SHAPES)
    assert {d for _, _, d in seen} == set(DIRECTIONS)


def test_clip_moves_the_captioned_way() -> None:
    for i in range(40):
        clip = clip_params(2, i)
        (x0, y0), (x1, y1) = clip.centre(0), clip.centre(7)
        dx, dy = DIRECTIONS[clip.direction]
        assert (x1 - x0) * dx + (y1 - y0) * dy > 10.0


def test_the_shape_crosses_the_frame_along_the_centre_line() -> None:
    for i in range(200):
        clip = clip_params(7, i)
        (x0, y0), (x1, y1) = clip.centre(0), clip.centre(7)
        dx, dy = DIRECTIONS[clip.direction]
        along, across = ((x1 - x0) * dx, (y0, y1)) if dx else ((y1 - y0) * dy, (x0, x1))
        assert along >= 16.0  # at least half the frame
        assert across[0] == across[1] and abs(across[0] - 15.5) <= 2.0
        start = x0 if dx else y0
        assert (start < 15.5) == ((dx or dy) > 0)  # it starts on the side it moves away from


def test_find_clips_gives_the_first_matching_clips_as_make_clip_draws_them() -> None:
    found = find_clips(4, "blue", "square", "up", 3)
    assert [(c.colour, c.shape, c.direction) for _, c in found] == [("blue", "square", "up")] * 3
    for frames, clip in found:
        index = next(i for i in range(2000) if clip_params(4, i) == clip)
        assert torch.equal(frames, make_clip(4, index)[0])
