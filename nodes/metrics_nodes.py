"""Nodes: quality metrics (PSNR, SSIM, CLIP text alignment and frame consistency, Fréchet distance) and the
model loaders they need (CLIP, feature extractors for FID/FVD).

Every metric node returns its headline number as a ``float`` output, its per-frame (or per-pair) values as
a ``list[float]``, and a ``Metric`` that ``write_report`` turns into a table row stating how it was measured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import Field

from reelgraph import InputPath, NodeInputError, RunContext, node, path_input

from . import metrics
from .clip_models import ClipLoadError, ClipModel, clip_source_fingerprint, embed_frames, embed_text
from .clip_models import load_clip as _load_clip
from .metrics import FeatureExtractor, Features, Metric, PairMode
from .model_safety import ModelTooLarge
from .values import Video

Label = Annotated[str, Field(max_length=200)]
BatchFrames = Annotated[int, Field(ge=1, le=4096)]
Device = Literal["auto", "cpu", "cuda"]
ClipSource = path_input("builtin:")


class FrameMetric(NamedTuple):
    """A metric averaged over frames, with the value of every frame."""

    value: float
    per_frame: list[float]
    metric: Metric


class PairMetric(NamedTuple):
    """A metric averaged over pairs of frames, with the value of every pair."""

    value: float
    per_pair: list[float]
    metric: Metric


class DistanceMetric(NamedTuple):
    """A distance between two feature sets."""

    value: float
    metric: Metric


def _progress(ctx: RunContext) -> Any:
    return lambda i, n: ctx.progress(i, n)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _check_same_shape(video: Video, reference: Video) -> None:
    a, b = tuple(video.frames.shape), tuple(reference.frames.shape)
    if a != b:
        raise NodeInputError(
            f"reference frames {list(b)} do not match video frames {list(a)} ([frames, channels, height, width]); "
            "load both at the same size and frame count (load_video's height, width and max_frames)",
            input="reference")


def _size_details(video: Video) -> dict[str, Any]:
    return {"frames": video.num_frames, "height": video.height, "width": video.width}


@node("psnr", category="metrics")
def psnr(video: Video, reference: Video, ctx: RunContext, label: Label = "") -> FrameMetric:
    """Peak signal-to-noise ratio in dB of each frame against the reference, and its mean over frames.

    torchmetrics' PSNR with ``data_range=1.0`` (frames are floats in [0, 1]). Identical frames give
    ``inf``, and so does the mean when any frame is identical.

    Args:
        video: the frames to judge, e.g. a reconstruction.
        reference: the frames they should equal; the same shape as ``video``.
        label: the name in reports (default ``psnr``).
    """
    _check_same_shape(video, reference)
    values = metrics.psnr_per_frame(video.frames, reference.frames, progress=_progress(ctx))
    value = _mean(values)
    metric = Metric(label or "psnr", value, tuple(values), unit="dB",
                    details={"data_range": 1.0, **_size_details(video)})
    return FrameMetric(value, values, metric)


@node("ssim", category="metrics")
def ssim(
    video: Video,
    reference: Video,
    ctx: RunContext,
    kernel_size: Annotated[int, Field(ge=3, le=31)] = 11,
    sigma: Annotated[float, Field(gt=0, le=10)] = 1.5,
    label: Label = "",
) -> FrameMetric:
    """Structural similarity of each frame against the reference, and its mean over frames.

    torchmetrics' Gaussian-window SSIM with ``data_range=1.0``, K1 = 0.01 and K2 = 0.03, averaged over the
    colour channels and pixels of each frame. Identical frames give 1.0.

    Args:
        video: the frames to judge.
        reference: the frames they should equal; the same shape as ``video``.
        kernel_size: side of the Gaussian window, odd; frames must be at least this large.
        sigma: standard deviation of the Gaussian window.
        label: the name in reports (default ``ssim``).
    """
    _check_same_shape(video, reference)
    if kernel_size % 2 == 0:
        raise NodeInputError(f"kernel_size must be odd, got {kernel_size}", input="kernel_size")
    if min(video.height, video.width) < kernel_size:
        raise NodeInputError(f"frames of {video.height}x{video.width} are smaller than the {kernel_size}-pixel "
                             "SSIM window; lower kernel_size", input="kernel_size")
    values = metrics.ssim_per_frame(video.frames, reference.frames, kernel_size=kernel_size, sigma=sigma,
                                    progress=_progress(ctx))
    value = _mean(values)
    metric = Metric(label or "ssim", value, tuple(values), scale="0 to 1, 1 = identical", details={
        "data_range": 1.0, "kernel_size": kernel_size, "sigma": sigma, "k1": 0.01, "k2": 0.03,
        **_size_details(video)})
    return FrameMetric(value, values, metric)


def _clip_fingerprint(values: dict[str, Any], ctx: RunContext) -> Any:
    return clip_source_fingerprint(str(values["source"]))


@node("load_clip", category="models", output="clip", fingerprint=_clip_fingerprint)
def load_clip(ctx: RunContext, source: ClipSource = "builtin:tiny", device: Device = "auto") -> ClipModel:
    """Load a CLIP model (image and text towers) for the CLIP metrics, once per process.

    Checked like a model folder (no custom code, no links out of the folder, ``CLIPModel`` and a CLIP
    tokenizer only), and refused with ``too_large`` when its config exceeds the memory limit.

    Args:
        source: a folder with a transformers ``CLIPModel`` (``config.json``, ``*.safetensors``) and its
            processor files (tokenizer, ``preprocessor_config.json``), relative to the workflow's folder; or
            ``builtin:tiny``, a tiny random CLIP built locally on first use (no download).
        device: ``auto`` picks CUDA when available, else the CPU.
    """
    try:
        return _load_clip(source, device=device, max_bytes=ctx.max_memory)
    except ModelTooLarge as exc:
        raise NodeInputError(str(exc), input="source", code="too_large") from exc
    except ClipLoadError as exc:
        raise NodeInputError(str(exc), input="source", code="model_load_failed") from exc


@node("clip_text_alignment", category="metrics")
def clip_text_alignment(clip: ClipModel, video: Video, prompt: str, ctx: RunContext,
                        batch_frames: BatchFrames = 16, label: Label = "") -> FrameMetric:
    """CLIP score of each frame against a prompt, ``100 * max(cos(image, text), 0)``, and its mean.

    This is the CLIP score definition (Hessel et al. 2021, with weight 100, as torchmetrics' ``CLIPScore``):
    the cosine of CLIP's projected image and text embeddings, floored at 0. The prompt is truncated to the
    model's context (77 tokens for released CLIPs).

    Args:
        clip: from ``load_clip``.
        video: the frames to judge.
        prompt: the text they should show.
        batch_frames: frames per CLIP forward pass.
        label: the name in reports (default ``clip_text_alignment``).
    """
    import torch

    images = embed_frames(clip, video.frames, batch=batch_frames, progress=_progress(ctx))
    text = embed_text(clip, prompt)
    cos = torch.nn.functional.cosine_similarity(images.double(), text.double()[None], dim=-1)
    values = [float(v) for v in 100 * cos.clamp(min=0)]
    value = _mean(values)
    metric = Metric(label or "clip_text_alignment", value, tuple(values), scale="CLIP score, 0 to 100", details={
        "model": clip.source, "prompt": prompt, "definition": "100 * max(cos(image, text), 0)",
        "frames": video.num_frames})
    return FrameMetric(value, values, metric)


@node("clip_frame_consistency", category="metrics")
def clip_frame_consistency(clip: ClipModel, video: Video, ctx: RunContext, pairs: PairMode = "consecutive",
                           batch_frames: BatchFrames = 16, label: Label = "") -> PairMetric:
    """Mean cosine similarity between the CLIP image embeddings of pairs of frames (1.0 = all alike).

    Papers use both pair sets, so the report states which: ``consecutive`` compares each frame with the
    next (temporal smoothness, as in Tune-A-Video), ``all`` every pair of frames (global consistency).

    Args:
        clip: from ``load_clip``.
        video: at least 2 frames.
        pairs: ``consecutive`` (frame i with i+1) or ``all`` (every i < j).
        batch_frames: frames per CLIP forward pass.
        label: the name in reports (default ``clip_frame_consistency``).
    """
    if video.num_frames < 2:
        raise NodeInputError("frame consistency needs at least 2 frames, got 1", input="video")
    images = embed_frames(clip, video.frames, batch=batch_frames, progress=_progress(ctx))
    values = metrics.cosine_pairs(images, pairs)
    value = _mean(values)
    metric = Metric(label or "clip_frame_consistency", value, tuple(values), scale="cosine, 1 = alike",
                    item_label="consecutive pairs" if pairs == "consecutive" else "pairs",
                    details={"model": clip.source, "pairs": pairs, "frames": video.num_frames})
    return PairMetric(value, values, metric)


def _weights_fingerprint(values: dict[str, Any], ctx: RunContext) -> Any:
    path = values.get("weights")
    if path is None:
        return None
    try:
        stat = path.stat()
    except OSError:
        return [str(path), None]
    return [str(path), stat.st_size, stat.st_mtime_ns]


@node("load_feature_extractor", category="models", output="extractor", fingerprint=_weights_fingerprint)
def load_feature_extractor(architecture: str, weights: InputPath | None = None,
                           device: Device = "auto") -> FeatureExtractor:
    """Build a registered feature-extractor architecture (e.g. I3D for FVD) and load its weights.

    Architectures are code, so plugins register them with
    ``reelgraph.nodes.metrics.register_feature_extractor``; a workflow only names one. Weights are read
    by ``nodes/weights.py``: safetensors, or pickle files through ``torch.load(weights_only=True)``.

    Args:
        architecture: a registered architecture name.
        weights: a weight file for it (relative to the workflow's folder); none keeps the factory's own.
        device: ``auto`` picks CUDA when available, else the CPU.
    """
    from .model_loading import resolve_device
    from .weights import WeightsError, load_state_dict

    spec = metrics.feature_extractors().get(architecture)
    if spec is None:
        known = ", ".join(sorted(metrics.feature_extractors())) or "none (a plugin must register one)"
        raise NodeInputError(f"unknown feature extractor {architecture!r}; registered: {known}", input="architecture")
    module = spec.factory()
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise NodeInputError(f"weight file {str(path)!r} does not exist", input="weights", code="file_not_found")
        try:
            module.load_state_dict(load_state_dict(path), strict=True)
        except (WeightsError, RuntimeError) as exc:
            raise NodeInputError(f"cannot load {str(path)!r} into {architecture!r}: {exc}", input="weights",
                                 code="model_load_failed") from exc
    module.to(resolve_device(device))
    module.eval()
    module.requires_grad_(False)
    return FeatureExtractor(module=module, spec=spec, weights=str(weights or ""))


@node("video_features", category="metrics", output="features")
def video_features(
    extractor: FeatureExtractor,
    video: Video,
    ctx: RunContext,
    clip_frames: Annotated[int, Field(ge=1, le=4096)] | None = None,
    stride: Annotated[int, Field(ge=1, le=4096)] | None = None,
    batch: Annotated[int, Field(ge=1, le=1024)] = 8,
) -> Features:
    """Feature vectors of a video for ``frechet_distance``: one per frame (``frames`` extractors, FID) or
    one per window of ``clip_frames`` frames (``clips`` extractors such as I3D, FVD).

    Args:
        extractor: from ``load_feature_extractor``.
        video: the frames.
        clip_frames: window length for ``clips`` extractors (default: the whole video).
        stride: frames between window starts (default: ``clip_frames``, no overlap).
        batch: frames or windows per forward pass.
    """
    try:
        tensor = metrics.extract_features(extractor, video.frames, clip_frames=clip_frames, stride=stride,
                                          batch=batch, progress=_progress(ctx))
    except ValueError as exc:
        raise NodeInputError(str(exc), input="clip_frames" if "clip_frames" in str(exc) else "extractor") from exc
    return Features(tensor, source=extractor.spec.name)


@node("frechet_distance", category="metrics")
def frechet_distance(features_a: Features, features_b: Features, label: Label = "") -> DistanceMetric:
    """Fréchet distance between Gaussians fitted to two feature sets: the FID/FVD formula (0 = same
    statistics; lower is better). Each set needs at least 2 vectors; reliable values need many more
    vectors than dimensions.

    Args:
        features_a: e.g. features of generated videos (``video_features``).
        features_b: e.g. features of reference videos; the same vector length.
        label: the name in reports (default ``frechet_distance``).
    """
    if features_a.dim != features_b.dim:
        raise NodeInputError(f"features_b has vectors of length {features_b.dim}, features_a of {features_a.dim}",
                             input="features_b")
    for name, features in (("features_a", features_a), ("features_b", features_b)):
        if features.count < 2:
            raise NodeInputError(f"{name} holds {features.count} vector; a covariance needs at least 2", input=name)
    value = metrics.frechet_distance(features_a.tensor, features_b.tensor)
    metric = Metric(label or "frechet_distance", value, higher_is_better=False,
                    scale="0 = same distribution, lower is better", details={
        "features": features_a.source or features_b.source, "count_a": features_a.count,
        "count_b": features_b.count, "dim": features_a.dim})
    return DistanceMetric(value, metric)
