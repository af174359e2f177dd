"""FID/FVD plumbing: a registered tiny random extractor with safetensors weights, ``video_features`` in both
layouts, and ``frechet_distance`` in a workflow against SciPy."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reelgraph import Engine, NodeFailed
from reelgraph.nodes import metrics

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")
scipy_linalg = pytest.importorskip("scipy.linalg")

ASSET = Path(__file__).resolve().parents[2] / "workflows" / "assets" / "red_circle_left.mp4"


def tiny_frames_net() -> Any:
    """An Inception stand-in: [B, 3, 16, 16] -> [B, 6]."""
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 7 * 7, 6))


class TinyClipsNet(torch.nn.Module):
    """An I3D stand-in: [B, 3, T, 16, 16] -> [B, 5] (a 3D convolution, then mean pooling)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(3, 5, (2, 3, 3))

    def forward(self, x: Any) -> Any:
        return self.conv(x).mean(dim=(2, 3, 4))


@pytest.fixture
def extractors(tmp_path: Path) -> dict[str, Path]:
    """Register both stand-ins (idempotent) and save seeded weights for them as safetensors in ``tmp_path``
    (an allowed folder: it is the runs' output folder), with a copy of the test clip."""
    import shutil

    from safetensors.torch import save_file

    metrics.register_feature_extractor("test_tiny_frames", tiny_frames_net, layout="frames", size=(16, 16))
    metrics.register_feature_extractor("test_tiny_clips", TinyClipsNet, layout="clips", size=(16, 16),
                                       value_range="symmetric")
    shutil.copyfile(ASSET, tmp_path / ASSET.name)
    folder = tmp_path
    paths = {}
    torch.manual_seed(0)
    for name, factory in (("test_tiny_frames", tiny_frames_net), ("test_tiny_clips", TinyClipsNet)):
        paths[name] = folder / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in factory().state_dict().items()}, str(paths[name]))
    return paths


def scipy_frechet(a: Any, b: Any) -> float:
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    diff = a.mean(0) - b.mean(0)
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(scipy_linalg.sqrtm(s1 @ s2).real))


def workflow(architecture: str, weights: str, folder: Path, **features: Any) -> dict[str, Any]:
    clip = str(folder / ASSET.name)
    return {"reelgraph": 1, "name": "t", "nodes": {
        "ext": {"type": "load_feature_extractor",
                "inputs": {"architecture": architecture, "device": "cpu", **({"weights": weights} if weights else {})}},
        "a": {"type": "load_video", "inputs": {"path": clip}},
        "b": {"type": "load_video", "inputs": {"path": clip, "every_nth": 2, "height": 24, "width": 24}},
        "fa": {"type": "video_features",
               "inputs": {"extractor": {"from": "ext.extractor"}, "video": {"from": "a.video"}, **features}},
        "fb": {"type": "video_features",
               "inputs": {"extractor": {"from": "ext.extractor"}, "video": {"from": "b.video"}, **features}},
        "fd": {"type": "frechet_distance", "inputs": {"features_a": {"from": "fa.features"},
                                                      "features_b": {"from": "fb.features"}, "label": "fid"}},
    }}


def test_frame_features_and_fid_match_direct_computation(extractors: dict[str, Path], reelgraph_home: Path,
                                                         make_engine: Callable[..., Engine], tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from reelgraph.nodes.video_io import read_video

    doc = workflow("test_tiny_frames", str(extractors["test_tiny_frames"]), tmp_path, batch=3)
    result = make_engine().run(doc, outputs=["fa.features", "fb.features", "fd.value", "fd.metric"], out_dir=tmp_path)
    net = tiny_frames_net()
    net.load_state_dict(load_file(str(extractors["test_tiny_frames"])))
    frames = read_video(ASSET).frames
    with torch.no_grad():
        direct = net(torch.nn.functional.interpolate(frames, size=(16, 16), mode="bilinear", antialias=True))
    fa, fb = result.outputs["fa.features"], result.outputs["fb.features"]
    assert (fa.count, fa.dim, fb.count) == (8, 6, 4) and fa.source == "test_tiny_frames"
    assert torch.allclose(fa.tensor, direct, atol=1e-6)
    expected = scipy_frechet(fa.tensor.double().numpy(), fb.tensor.double().numpy())
    assert result.outputs["fd.value"] == pytest.approx(expected, rel=1e-6)
    assert result.outputs["fd.metric"].name == "fid"


def test_clip_features_windows_and_fvd(extractors: dict[str, Path], reelgraph_home: Path,
                                       make_engine: Callable[..., Engine], tmp_path: Path) -> None:
    doc = workflow("test_tiny_clips", str(extractors["test_tiny_clips"]), tmp_path, clip_frames=2, stride=1)
    result = make_engine().run(doc, outputs=["fa.features", "fb.features", "fd.value"], out_dir=tmp_path)
    fa, fb = result.outputs["fa.features"], result.outputs["fb.features"]
    assert (fa.count, fa.dim, fb.count) == (7, 5, 3)  # windows of 2 frames every frame: 8 -> 7, 4 -> 3
    assert result.outputs["fd.value"] == pytest.approx(
        scipy_frechet(fa.tensor.double().numpy(), fb.tensor.double().numpy()), rel=1e-6)
    same = make_engine().run(doc, outputs=["fa.features"], out_dir=tmp_path).outputs["fa.features"]
    assert metrics.frechet_distance(same.tensor, fa.tensor) == pytest.approx(0.0, abs=1e-9)


def test_extractor_errors_are_located(extractors: dict[str, Path], reelgraph_home: Path,
                                      make_engine: Callable[..., Engine], tmp_path: Path) -> None:
    engine = make_engine()
    wrong_weights = str(extractors["test_tiny_clips"])
    cases = [
        (workflow("no_such_net", "", tmp_path), ("invalid_value", "ext", "architecture"), "test_tiny_frames"),
        (workflow("test_tiny_frames", wrong_weights, tmp_path), ("model_load_failed", "ext", "weights"), "cannot load"),
        (workflow("test_tiny_frames", str(tmp_path / "none.safetensors"), tmp_path),
         ("file_not_found", "ext", "weights"), "does not exist"),
        (workflow("test_tiny_clips", "", tmp_path, clip_frames=6), ("invalid_value", "fb", "clip_frames"),
         "longer than"),
    ]
    for doc, where, words in cases:
        with pytest.raises(NodeFailed) as info:
            engine.run(doc, out_dir=tmp_path)
        assert (info.value.code, info.value.node, info.value.input) == where
        assert words in info.value.message
    with pytest.raises(ValueError, match="already registered"):
        metrics.register_feature_extractor("test_tiny_frames", TinyClipsNet, layout="clips")
