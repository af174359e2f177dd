"""``track_object``: exact on ground-truth clips, honest about missing colour or motion."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from reelgraph import Engine, NodeInputError  # noqa: E402
from reelgraph.nodes.metrics import Metric  # noqa: E402
from reelgraph.nodes.shapes_dataset import COLOURS, make_clip  # noqa: E402
from reelgraph.nodes.tracking import parse_prompt, rgb_to_hsv, track  # noqa: E402
from reelgraph.nodes.tracking_nodes import track_object  # noqa: E402
from reelgraph.nodes.values import Video  # noqa: E402


def test_tracker_is_exact_on_ground_truth_clips() -> None:
    for i in range(300):
        frames, clip = make_clip(11, i)
        got = track(frames)
        assert (got.colour, got.direction) == (clip.colour, clip.direction), (i, clip, got)
        assert got.confidence > 0.9
        for f, point in enumerate(got.path):
            assert point is not None
            cx, cy = clip.centre(f)
            assert abs(point[0] - cx) < 1.5 and abs(point[1] - cy) < 1.5


def test_hsv_of_pure_colours() -> None:
    rgb = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.5, 0.5, 0.5]])
    hue, sat, val = rgb_to_hsv(rgb.T.reshape(3, 5, 1))
    assert hue.flatten().tolist() == pytest.approx([0.0, 120.0, 240.0, 60.0, 0.0])
    assert sat.flatten().tolist() == pytest.approx([1, 1, 1, 1, 0])
    assert val.flatten().tolist() == pytest.approx([1, 1, 1, 1, 0.5])
    for name, rgb_value in COLOURS.items():  # every dataset colour lands in its own hue range
        frame = torch.tensor(rgb_value).view(1, 3, 1, 1).expand(2, 3, 4, 4)
        assert track(frame, min_pixels=1).colour == name


def test_grey_and_static_clips_report_none() -> None:
    grey = torch.full((8, 3, 32, 32), 0.3)
    assert track(grey).colour == "none" and track(grey).confidence == 0.0
    frames, clip = make_clip(11, 0)
    still = frames[:1].expand(8, -1, -1, -1)
    got = track(still)
    assert got.colour == clip.colour and got.direction == "none" and got.confidence == 0.0


def test_parse_prompt() -> None:
    assert parse_prompt("A Red circle, moving LEFT") == ("red", "left")
    assert parse_prompt("a square") == (None, None)


def test_node_matches_prompt_and_fills_metric() -> None:
    frames, clip = make_clip(11, 3)
    out = track_object(Video(frames), prompt=clip.caption)
    assert (out.colour, out.direction, out.match) == (clip.colour, clip.direction, True)
    assert out.metric.value == 1.0 and out.metric.details["expected_direction"] == clip.direction
    assert len(out.metric.details["path"]) == 8
    other = "green" if clip.colour != "green" else "red"
    assert track_object(Video(frames), prompt=f"a {other} circle moving {clip.direction}").metric.value == 0.0
    plain = track_object(Video(frames))
    assert plain.match is False and plain.metric.value == pytest.approx(plain.confidence)


def test_node_rejects_unknown_colours_and_empty_prompts() -> None:
    frames, _ = make_clip(11, 3)
    with pytest.raises(NodeInputError):
        track_object(Video(frames), colours="red,purple")
    with pytest.raises(NodeInputError):
        track_object(Video(frames), prompt="a shape")


def test_node_in_a_workflow_on_the_shipped_clip(reelgraph_home: Path, make_engine: Callable[..., Engine],
                                                tmp_path: Path) -> None:
    pytest.importorskip("av")
    clip = tmp_path / "red_circle_left.mp4"
    shutil.copyfile(Path(__file__).resolve().parents[2] / "workflows" / "assets" / clip.name, clip)
    doc = {"reelgraph": 1, "name": "t", "nodes": {
        "v": {"type": "load_video", "inputs": {"path": str(clip)}},
        "track": {"type": "track_object", "inputs": {"video": {"from": "v.video"},
                                                     "prompt": "a red circle moving left"}},
    }}
    wanted = ["track.colour", "track.direction", "track.match", "track.metric"]
    out = make_engine().run(doc, outputs=wanted, out_dir=tmp_path).outputs
    assert (out["track.colour"], out["track.direction"], out["track.match"]) == ("red", "left", True)
    assert isinstance(out["track.metric"], Metric) and out["track.metric"].value == 1.0
