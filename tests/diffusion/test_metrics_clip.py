"""CLIP metrics on the tiny CLIP: scores equal a direct transformers computation, consistency of identical
frames is 1, the builtin folder is deterministic, and bad sources are located errors."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from reelgraph import Engine, NodeFailed
from reelgraph.nodes.clip_models import ClipModel, ImagePreprocess
from reelgraph.nodes.metrics_nodes import clip_frame_consistency, clip_text_alignment
from reelgraph.nodes.values import Video

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]
ASSET = ROOT / "workflows" / "assets" / "red_circle_left.mp4"
CTX: Any = SimpleNamespace(progress=lambda i, n: None)
PROMPTS = ["a red circle moving left", "a blue circle moving left", "waves crashing on the beach at sunset"]


@pytest.fixture(scope="module")
def clip(reelgraph_home: Path) -> ClipModel:
    from reelgraph.nodes.clip_models import load_clip

    return load_clip("builtin:tiny", device="cpu")


def clips() -> list[Video]:
    from reelgraph.nodes.video_io import read_video

    noise = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return [read_video(ASSET), Video((noise * 255).round() / 255)]


def test_clip_scores_equal_a_direct_transformers_computation(clip: ClipModel) -> None:
    folder = clip.model.name_or_path
    model = transformers.CLIPModel.from_pretrained(folder).eval()
    processor = transformers.CLIPProcessor(image_processor=transformers.CLIPImageProcessor.from_pretrained(folder),
                                           tokenizer=transformers.CLIPTokenizer.from_pretrained(folder))
    positive = 0
    for video in clips():
        images = [(f * 255).round().to(torch.uint8).permute(1, 2, 0).numpy() for f in video.frames]
        for prompt in PROMPTS:
            inputs = processor(text=[prompt], images=images, return_tensors="pt", padding="max_length")
            with torch.no_grad():
                out = model(**inputs)
            expected = (100 * (out.image_embeds @ out.text_embeds.T)[:, 0].clamp(min=0)).tolist()
            value, per_frame, metric = clip_text_alignment(clip, video, prompt, CTX, batch_frames=3)
            assert per_frame == pytest.approx(expected, abs=1e-5)
            assert value == pytest.approx(sum(expected) / len(expected), abs=1e-5)
            assert metric.details["prompt"] == prompt and metric.details["model"] == "builtin:tiny"
            positive += sum(v > 0 for v in per_frame)
    assert positive > 0, "every score was floored at 0: the comparison would be vacuous"


def test_frame_consistency_equals_direct_cosines(clip: ClipModel) -> None:
    video = clips()[0]
    model = transformers.CLIPModel.from_pretrained(clip.model.name_or_path).eval()
    with torch.no_grad():
        embeds = model(input_ids=torch.tensor([[0, 1]]), pixel_values=clip.preprocess(video.frames)).image_embeds
    sims = embeds @ embeds.T
    value, per_pair, metric = clip_frame_consistency(clip, video, CTX, pairs="consecutive")
    assert per_pair == pytest.approx([sims[i, i + 1].item() for i in range(7)], abs=1e-5)
    assert value == pytest.approx(sum(per_pair) / 7) and metric.details["pairs"] == "consecutive"
    every = clip_frame_consistency(clip, video, CTX, pairs="all")
    assert every.per_pair == pytest.approx([sims[i, j].item() for i in range(8) for j in range(i + 1, 8)], abs=1e-5)
    assert every.metric.item_label == "pairs" and metric.item_label == "consecutive pairs"


def test_identical_frames_give_consistency_one(clip: ClipModel) -> None:
    frame = torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(3))
    video = Video(frame.expand(5, 3, 40, 40).contiguous())
    for pairs in ("consecutive", "all"):
        value, per_pair, _ = clip_frame_consistency(clip, video, CTX, pairs=pairs)
        assert value == pytest.approx(1.0, abs=1e-6)
        assert len(per_pair) == (4 if pairs == "consecutive" else 10)
    from reelgraph import NodeInputError

    with pytest.raises(NodeInputError) as info:
        clip_frame_consistency(clip, Video(frame), CTX)
    assert info.value.input == "video"


def test_preprocessing_follows_clip_image_processor(clip: ClipModel) -> None:
    """Equal without a resize; about 1/255 apart on average with one (PIL's bicubic runs on 8-bit images)."""
    processor = transformers.CLIPImageProcessor.from_pretrained(clip.model.name_or_path)
    for height, width in [(32, 32), (48, 64), (80, 40)]:
        smooth = torch.nn.functional.interpolate(torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(1)),
                                                 size=(height, width), mode="bilinear")
        u8 = (smooth * 255).round().to(torch.uint8)
        expected = processor(images=[f.permute(1, 2, 0).numpy() for f in u8], return_tensors="pt")["pixel_values"]
        ours = clip.preprocess(u8.float() / 255)
        assert ours.shape == expected.shape == (2, 3, 32, 32)
        diff = (ours - expected).abs()
        if (height, width) == (32, 32):
            assert diff.max().item() < 1e-5
        else:
            assert diff.mean().item() < 0.01 and diff.max().item() < 0.05


def test_preprocess_config_variants() -> None:
    pre = ImagePreprocess.from_config({"size": {"height": 20, "width": 30}, "do_center_crop": False,
                                       "do_normalize": False}, 224)
    frames = torch.rand(1, 3, 50, 60)
    assert pre(frames).shape == (1, 3, 20, 30)
    crop_pad = ImagePreprocess.from_config({"do_resize": False, "crop_size": 64}, 224)(frames)
    assert crop_pad.shape == (1, 3, 64, 64)


def test_tiny_clip_is_built_deterministically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clip: ClipModel) -> None:
    from safetensors.torch import load_file

    from reelgraph.nodes import clip_models

    monkeypatch.setenv("REELGRAPH_HOME", str(tmp_path))
    again = clip_models.ensure_tiny_clip()
    assert again == tmp_path / "models" / clip_models.TINY_CLIP_NAME
    assert not [p for p in again.parent.iterdir() if p.name.startswith(".")], "temporary folder left behind"
    ours = load_file(str(Path(clip.model.name_or_path) / "model.safetensors"))
    theirs = load_file(str(again / "model.safetensors"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def _clip_workflow(source: str, folder: Path) -> dict[str, Any]:
    """CLIP scores of the test clip, copied into ``folder`` (the run's output folder, always allowed)."""
    clip = folder / ASSET.name
    if not clip.exists():
        shutil.copyfile(ASSET, clip)
    return {"reelgraph": 1, "name": "t", "nodes": {
        "clip_model": {"type": "load_clip", "inputs": {"source": source}},
        "v": {"type": "load_video", "inputs": {"path": str(clip)}},
        "align": {"type": "clip_text_alignment", "inputs": {"clip": {"from": "clip_model.clip"},
                                                           "video": {"from": "v.video"}, "prompt": "a red circle"}},
    }}


def test_clip_sources_load_or_fail_located(clip: ClipModel, make_engine: Callable[..., Engine],
                                           tmp_path: Path) -> None:
    engine = make_engine()
    copy = tmp_path / "my-clip"
    shutil.copytree(clip.model.name_or_path, copy)
    for name in ("vocab.json", "merges.txt"):  # a folder as CLIPProcessor.save_pretrained leaves it
        (copy / name).unlink()
    by_folder = engine.run(_clip_workflow(str(copy), tmp_path), out_dir=tmp_path).outputs["align.per_frame"]
    builtin = engine.run(_clip_workflow("builtin:tiny", tmp_path), out_dir=tmp_path).outputs["align.per_frame"]
    assert by_folder == pytest.approx(builtin, abs=1e-6)

    (copy / "model.safetensors").rename(copy / "pytorch_model.bin")
    cases = {str(tmp_path / "missing"): "does not exist", str(copy): "pickle", "builtin:huge": "unknown builtin"}
    for source, words in cases.items():
        with pytest.raises(NodeFailed) as info:
            engine.run(_clip_workflow(source, tmp_path), out_dir=tmp_path)
        err = info.value
        assert (err.code, err.node, err.input) == ("model_load_failed", "clip_model", "source")
        assert words in err.message
