"""Pixel metrics and the Fréchet distance: PSNR/SSIM against torchmetrics and closed forms, the Fréchet
distance against SciPy, located errors, and the ``Metric``/``Features`` values on the disk cache."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from reelgraph import Engine, NodeFailed
from reelgraph.nodes import metrics
from reelgraph.nodes.metrics import Features, Metric
from reelgraph.nodes.metrics_nodes import frechet_distance as frechet_node
from reelgraph.nodes.metrics_nodes import psnr as psnr_node
from reelgraph.nodes.metrics_nodes import ssim as ssim_node
from reelgraph.nodes.values import Video

torch = pytest.importorskip("torch")
torchmetrics = pytest.importorskip("torchmetrics")

ROOT = Path(__file__).resolve().parents[2]
CLIP = ROOT / "workflows" / "assets" / "red_circle_left.mp4"
CTX: Any = SimpleNamespace(progress=lambda i, n: None)


def noisy_pair(seed: int = 0, frames: int = 5, height: int = 24, width: int = 28) -> tuple[Video, Video]:
    g = torch.Generator().manual_seed(seed)
    reference = torch.rand(frames, 3, height, width, generator=g)
    noise = torch.randn(reference.shape, generator=g) * torch.linspace(0.02, 0.2, frames).view(-1, 1, 1, 1)
    return Video((reference + noise).clamp(0, 1)), Video(reference)


def test_psnr_equals_torchmetrics_per_frame_and_closed_form() -> None:
    from torchmetrics.image import PeakSignalNoiseRatio

    video, reference = noisy_pair()
    value, per_frame, metric = psnr_node(video, reference, CTX)
    for i in range(video.num_frames):
        expected = PeakSignalNoiseRatio(data_range=1.0)(video.frames[i:i + 1], reference.frames[i:i + 1]).item()
        assert per_frame[i] == pytest.approx(expected, abs=1e-5)
    assert value == pytest.approx(sum(per_frame) / len(per_frame))
    assert per_frame == sorted(per_frame, reverse=True)  # the noise grows frame by frame
    assert (metric.name, metric.unit, metric.details["data_range"]) == ("psnr", "dB", 1.0)
    assert metric.items == tuple(per_frame)
    # A uniform error of 0.1 on a [0, 1] range is exactly 20 dB.
    flat = torch.full((2, 3, 16, 16), 0.5)
    assert psnr_node(Video(flat + 0.1), Video(flat), CTX).value == pytest.approx(20.0, abs=1e-4)


def test_data_range_is_fixed_not_inferred() -> None:
    """A dark clip's PSNR must not depend on its brightest pixel (torchmetrics infers the range without one)."""
    flat = torch.full((1, 3, 16, 16), 0.1)
    assert psnr_node(Video(flat + 0.01), Video(flat), CTX).value == pytest.approx(40.0, abs=1e-3)


def test_ssim_equals_torchmetrics() -> None:
    from torchmetrics.image import StructuralSimilarityIndexMeasure

    video, reference = noisy_pair(seed=1)
    value, per_frame, metric = ssim_node(video, reference, CTX)
    batch = StructuralSimilarityIndexMeasure(data_range=1.0)(video.frames, reference.frames).item()
    assert value == pytest.approx(batch, abs=1e-6)
    for i in range(video.num_frames):
        one = StructuralSimilarityIndexMeasure(data_range=1.0)(video.frames[i:i + 1], reference.frames[i:i + 1])
        assert per_frame[i] == pytest.approx(one.item(), abs=1e-6)
    assert metric.details["kernel_size"] == 11 and metric.details["data_range"] == 1.0
    small = ssim_node(video, reference, CTX, kernel_size=7, sigma=1.0).per_frame
    assert small != per_frame


def test_identical_videos_give_infinity_and_one() -> None:
    video, _ = noisy_pair(seed=2)
    same = Video(video.frames.clone())
    value, per_frame, metric = psnr_node(video, same, CTX)
    assert value == math.inf and per_frame == [math.inf] * video.num_frames
    assert str(metric) == "psnr = inf dB (mean of 5 frames)"
    assert ssim_node(video, same, CTX).value == pytest.approx(1.0, abs=1e-6)


def test_metric_lines_are_rounded_and_state_their_scale() -> None:
    video, reference = noisy_pair(seed=1)
    line = str(ssim_node(video, reference, CTX).metric)
    value = ssim_node(video, reference, CTX).value
    assert line == f"ssim = {value:.4g} (0 to 1, 1 = identical; mean of 5 frames)"
    assert len(line.split(" = ")[1].split(" ")[0].replace("0.", "", 1)) <= 4
    assert str(Metric("frechet_distance", 12.345678, higher_is_better=False, scale="lower is better")) == \
        "frechet_distance = 12.35 (lower is better)"


def test_frechet_distance_matches_scipy() -> None:
    np = pytest.importorskip("numpy")
    scipy_linalg = pytest.importorskip("scipy.linalg")

    def reference(a: Any, b: Any) -> float:  # the pytorch-fid formula
        s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
        covmean = scipy_linalg.sqrtm(s1 @ s2)
        diff = a.mean(0) - b.mean(0)
        return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))

    rng = np.random.default_rng(0)
    for n, m, d in [(64, 80, 8), (200, 150, 16), (300, 300, 48)]:
        a = rng.normal(size=(n, d))
        b = rng.normal(loc=0.3, size=(m, d)) @ rng.normal(size=(d, d)) * 0.3
        ours = metrics.frechet_distance(torch.from_numpy(a), torch.from_numpy(b))
        assert ours == pytest.approx(reference(a, b), rel=1e-9)
        assert metrics.frechet_distance(torch.from_numpy(a), torch.from_numpy(a)) == pytest.approx(0.0, abs=1e-9)
    # Float32 features (what extractors return) are promoted to float64 first.
    a32 = torch.from_numpy(rng.normal(size=(50, 4))).float()
    assert metrics.frechet_distance(a32, a32) == pytest.approx(0.0, abs=1e-9)


def test_frechet_node_checks_its_inputs() -> None:
    a = Features(torch.randn(10, 4), source="x")
    value, metric = frechet_node(a, Features(torch.randn(12, 4) + 1), label="fvd")
    assert value > 0 and metric.name == "fvd" and metric.higher_is_better is False
    assert metric.details == {"features": "x", "count_a": 10, "count_b": 12, "dim": 4}
    from reelgraph import NodeInputError

    with pytest.raises(NodeInputError) as info:
        frechet_node(a, Features(torch.randn(10, 5)))
    assert info.value.input == "features_b"
    with pytest.raises(NodeInputError) as info:
        frechet_node(Features(torch.randn(1, 4)), a)
    assert info.value.input == "features_a"


def test_cosine_pairs() -> None:
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert metrics.cosine_pairs(e, "consecutive") == pytest.approx([0.0, math.sqrt(0.5)])
    assert metrics.cosine_pairs(e, "all") == pytest.approx([0.0, math.sqrt(0.5), math.sqrt(0.5)])
    assert metrics.cosine_pairs(e[[0, 0, 0]], "all") == pytest.approx([1.0, 1.0, 1.0], abs=1e-12)


def test_metric_json_is_strict_and_round_trips() -> None:
    metric = Metric("psnr", math.inf, (math.inf, 30.5), unit="dB", details={"data_range": 1.0}, scale="dB")
    text = json.dumps(metric.to_json(), allow_nan=False)
    assert json.loads(text)["value"] == "inf"
    back = Metric.__reelgraph_restore__({}, json.loads(text))
    assert (back.value, back.items, back.details, back.scale) == (math.inf, (math.inf, 30.5), {"data_range": 1.0},
                                                                  "dB")


def _pair_workflow(folder: Path) -> dict[str, Any]:
    """Frames 1-6 of the test clip against frames 0-5; the clip is copied into ``folder`` (the run's output
    folder, which path checks allow wherever pytest runs from)."""
    import shutil

    clip = folder / CLIP.name
    if not clip.exists():
        shutil.copyfile(CLIP, clip)
    return {"reelgraph": 1, "name": "t", "nodes": {
        "b": {"type": "load_video", "inputs": {"path": str(clip), "start": 1, "max_frames": 6}},
        "c": {"type": "load_video", "inputs": {"path": str(clip), "max_frames": 6}},
        "psnr": {"type": "psnr", "inputs": {"video": {"from": "b.video"}, "reference": {"from": "c.video"}}},
        "ssim": {"type": "ssim", "inputs": {"video": {"from": "b.video"}, "reference": {"from": "c.video"}}},
    }}


def test_metric_nodes_in_a_workflow_and_on_the_disk_cache(reelgraph_home: Path,
                                                          make_engine: Callable[..., Engine], tmp_path: Path) -> None:
    from torchmetrics.functional.image import peak_signal_noise_ratio

    from reelgraph.nodes.video_io import read_video

    wanted = ["psnr.value", "psnr.per_frame", "psnr.metric", "ssim.value"]
    first = make_engine(cache_dir=tmp_path / "cache").run(_pair_workflow(tmp_path), outputs=wanted, out_dir=tmp_path)
    frames = read_video(CLIP).frames
    expected = peak_signal_noise_ratio(frames[1:7], frames[:6], data_range=1.0, reduction="none", dim=(1, 2, 3))
    assert first.outputs["psnr.per_frame"] == pytest.approx(expected.tolist(), abs=1e-5)
    again = make_engine(cache_dir=tmp_path / "cache").run(_pair_workflow(tmp_path), outputs=wanted, out_dir=tmp_path)
    assert set(again.cached) >= {"psnr", "ssim"}
    restored = again.outputs["psnr.metric"]
    assert isinstance(restored, Metric) and restored.items == first.outputs["psnr.metric"].items


def test_mismatched_shapes_are_located(reelgraph_home: Path, make_engine: Callable[..., Engine],
                                       tmp_path: Path) -> None:
    doc = _pair_workflow(tmp_path)
    doc["nodes"]["c"]["inputs"]["max_frames"] = 5
    with pytest.raises(NodeFailed) as info:
        make_engine().run(doc, outputs=["psnr.value"], out_dir=tmp_path)
    assert (info.value.code, info.value.node, info.value.input) == ("invalid_value", "psnr", "reference")
    assert "[5, 3, 32, 32]" in info.value.message and "[6, 3, 32, 32]" in info.value.message
    doc = _pair_workflow(tmp_path)
    doc["nodes"]["ssim"]["inputs"]["kernel_size"] = 8
    with pytest.raises(NodeFailed) as info:
        make_engine().run(doc, outputs=["ssim.value"], out_dir=tmp_path)
    assert (info.value.node, info.value.input) == ("ssim", "kernel_size")
