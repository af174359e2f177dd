"""Quality metrics for videos: PSNR, SSIM, cosine pairs of embeddings, the Fréchet distance, feature
extractors for FID/FVD, and the ``Metric`` and ``Features`` values that carry results on graph wires.

PSNR and SSIM are torchmetrics' functional implementations with ``data_range=1.0`` set explicitly, since
``Video`` frames are floats in [0, 1] by definition (torchmetrics would otherwise infer the range from the
data, which makes a dark clip's PSNR depend on its brightest pixel). Both are computed per frame and
averaged over frames, the usual video convention.

The Fréchet distance between two Gaussians fitted to feature sets (the FID/FVD formula) is
``|mu_a - mu_b|^2 + Tr(S_a) + Tr(S_b) - 2 Tr((S_a S_b)^(1/2))``. The trace of the matrix square root is
computed stably in float64 as the sum of the square roots of the eigenvalues of the symmetric matrix
``S_a^(1/2) S_b S_a^(1/2)``, which has the same eigenvalues as ``S_a S_b`` but never produces the complex
parts and NaNs that ``scipy.linalg.sqrtm(S_a @ S_b)`` can produce on singular covariances.

Only the standard library is imported at module level; torch and torchmetrics are imported in the
functions that need them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

__all__ = [
    "ExtractorSpec",
    "FeatureExtractor",
    "Features",
    "Metric",
    "PairMode",
    "cosine_pairs",
    "extract_features",
    "feature_extractors",
    "frechet_distance",
    "psnr_per_frame",
    "register_feature_extractor",
    "ssim_per_frame",
]

PairMode = Literal["all", "consecutive"]
ProgressFn = Callable[[int, int], None]


def json_float(value: float) -> float | str:
    """A float for strict JSON: finite values as they are, infinities and NaN as ``"inf"``, ``"-inf"``,
    ``"nan"`` (JSON has no literal for them; PSNR of identical frames is infinite)."""
    value = float(value)
    if math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def _from_json_float(value: float | str) -> float:
    return float(value)


@dataclass(frozen=True, eq=False)
class Metric:
    """One named quality number with its per-item values and how it was computed, for reports.

    ``items`` are per-frame values (PSNR, SSIM, CLIP text alignment) or per-pair values (frame
    consistency); ``item_label`` names them in the plural (``frames``, ``consecutive pairs``, ``pairs``).
    ``details`` holds JSON-able settings (data range, pair mode, prompt, model) so a report states exactly
    what was measured; ``scale`` says how to read the number (``0 to 100``, ``lower is better``).
    """

    name: str
    value: float
    items: tuple[float, ...] = ()
    item_label: str = "frames"
    unit: str = ""
    higher_is_better: bool = True
    details: dict[str, Any] = field(default_factory=dict)
    scale: str = ""

    def __str__(self) -> str:
        """One readable line, as the command line prints outputs, rounded to 4 significant digits and with the
        metric's scale: ``ssim = 0.9312 (0 to 1, 1 = identical; mean of 8 frames)``."""
        unit = f" {self.unit}" if self.unit else ""
        notes = [self.scale] if self.scale else []
        if self.items:
            notes.append(f"mean of {len(self.items)} {self.item_label}")
        return f"{self.name} = {self.value:.4g}{unit}" + (f" ({'; '.join(notes)})" if notes else "")

    def to_json(self) -> dict[str, Any]:
        """A strict-JSON dict (non-finite floats as strings, see ``json_float``)."""
        return {
            "name": self.name,
            "value": json_float(self.value),
            "unit": self.unit,
            "higher_is_better": self.higher_is_better,
            "item_label": self.item_label,
            "items": [json_float(v) for v in self.items],
            "details": self.details,
            "scale": self.scale,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Metric:
        """Rebuild from ``to_json`` output."""
        return cls(name=data["name"], value=_from_json_float(data["value"]),
                   items=tuple(_from_json_float(v) for v in data["items"]), item_label=data["item_label"],
                   unit=data["unit"], higher_is_better=bool(data["higher_is_better"]), details=data["details"],
                   scale=str(data.get("scale", "")))

    def __reelgraph_state__(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Persistence protocol: no tensors, everything in the JSON metadata."""
        return {}, self.to_json()

    @classmethod
    def __reelgraph_restore__(cls, tensors: dict[str, Any], meta: dict[str, Any]) -> Metric:
        """Persistence protocol: rebuild from ``__reelgraph_state__`` output."""
        return cls.from_json(meta)


@dataclass(eq=False)
class Features:
    """A set of feature vectors ``[N, D]`` (one per frame or per clip window) for the Fréchet distance."""

    tensor: torch.Tensor
    source: str = ""

    def __post_init__(self) -> None:
        """Validate the layout early."""
        if getattr(self.tensor, "ndim", None) != 2:
            shape = tuple(getattr(self.tensor, "shape", ()))
            raise ValueError(f"Features.tensor must be 2-D [N, D], got shape {shape}")

    @property
    def count(self) -> int:
        """Number of vectors ``N``."""
        return int(self.tensor.shape[0])

    @property
    def dim(self) -> int:
        """Vector length ``D``."""
        return int(self.tensor.shape[1])

    def __repr__(self) -> str:
        """Show the shape and origin, never the data."""
        return f"Features({self.count}x{self.dim}{', ' + self.source if self.source else ''})"

    def __reelgraph_state__(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Persistence protocol: the tensor and its origin."""
        return {"features": self.tensor}, {"source": self.source}

    @classmethod
    def __reelgraph_restore__(cls, tensors: dict[str, Any], meta: dict[str, Any]) -> Features:
        """Persistence protocol: rebuild from ``__reelgraph_state__`` output."""
        return cls(tensor=tensors["features"], source=str(meta.get("source", "")))


def _chunks(total: int, size: int) -> list[tuple[int, int]]:
    return [(s, min(s + size, total)) for s in range(0, total, size)]


def psnr_per_frame(video: torch.Tensor, reference: torch.Tensor, chunk: int = 64,
                   progress: ProgressFn | None = None) -> list[float]:
    """PSNR in dB of each frame of ``video`` against the same frame of ``reference`` (both ``[F, C, H, W]``
    in [0, 1], equal shapes), with ``data_range=1.0``; identical frames give ``inf``."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    values: list[float] = []
    spans = _chunks(int(video.shape[0]), chunk)
    for i, (a, b) in enumerate(spans):
        psnr = peak_signal_noise_ratio(video[a:b], reference[a:b], data_range=1.0, reduction="none", dim=(1, 2, 3))
        values.extend(float(v) for v in psnr)
        if progress is not None:
            progress(i + 1, len(spans))
    return values


def ssim_per_frame(video: torch.Tensor, reference: torch.Tensor, kernel_size: int = 11, sigma: float = 1.5,
                   chunk: int = 16, progress: ProgressFn | None = None) -> list[float]:
    """SSIM of each frame against the same reference frame: torchmetrics' Gaussian-window SSIM
    (``kernel_size``, ``sigma``, K1 = 0.01, K2 = 0.03) with ``data_range=1.0``, averaged over the colour
    channels and the valid (unpadded) pixels of each frame. Identical frames give 1.0."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    values: list[float] = []
    spans = _chunks(int(video.shape[0]), chunk)
    for i, (a, b) in enumerate(spans):
        ssim = structural_similarity_index_measure(video[a:b], reference[a:b], gaussian_kernel=True, sigma=sigma,
                                                   kernel_size=kernel_size, reduction="none", data_range=1.0)
        values.extend(float(v) for v in ssim)
        if progress is not None:
            progress(i + 1, len(spans))
    return values


def cosine_pairs(embeddings: torch.Tensor, pairs: PairMode) -> list[float]:
    """Cosine similarities between rows of ``embeddings`` ``[F, D]``: ``consecutive`` gives (i, i+1) for
    i = 0..F-2, ``all`` every pair i < j in row-major order. Computed in float64."""
    import torch

    unit = torch.nn.functional.normalize(embeddings.to(torch.float64), dim=-1)
    if pairs == "consecutive":
        return [float(v) for v in (unit[:-1] * unit[1:]).sum(-1)]
    sims = unit @ unit.T
    rows, cols = torch.triu_indices(len(unit), len(unit), offset=1)
    return [float(v) for v in sims[rows, cols]]


def _eigh(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.eigh`` of the symmetrised matrix (removes rounding asymmetry first)."""
    import torch

    return torch.linalg.eigh((matrix + matrix.T) / 2)


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix (eigenvalues below 0 from rounding are 0)."""
    values, vectors = _eigh(matrix)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """The Fréchet distance between Gaussians fitted to feature sets ``a`` ``[N, D]`` and ``b`` ``[M, D]``
    (means and unbiased covariances, as pytorch-fid and FVD implementations fit them). 0 for identical sets.

    Raises ``ValueError`` when a set has fewer than 2 vectors or the dimensions differ.
    """
    import torch

    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be [N, D] with the same D, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError(f"each feature set needs at least 2 vectors for a covariance, got {a.shape[0]} and "
                         f"{b.shape[0]}")
    a64, b64 = a.to(torch.float64), b.to(torch.float64)
    mu_a, mu_b = a64.mean(0), b64.mean(0)
    cov_a, cov_b = torch.cov(a64.T).reshape(a.shape[1], -1), torch.cov(b64.T).reshape(b.shape[1], -1)
    root_a = _sqrt_psd(cov_a)
    middle = _eigh(root_a @ cov_b @ root_a)[0].clamp(min=0).sqrt().sum()
    distance = (mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * middle
    return max(float(distance), 0.0)


# ----------------------------------------------------------------------------------------------- feature extractors

ExtractorLayout = Literal["frames", "clips"]


@dataclass(frozen=True)
class ExtractorSpec:
    """A feature-extractor architecture that plugins register by name (see ``register_feature_extractor``)."""

    name: str
    factory: Callable[[], Any]
    layout: ExtractorLayout
    size: tuple[int, int] | None = None
    value_range: Literal["unit", "symmetric"] = "unit"
    description: str = ""


@dataclass(eq=False)
class FeatureExtractor:
    """A loaded feature extractor: its ``torch.nn.Module`` (eval mode, no grad) and how to feed it.

    ``frames`` extractors take ``[B, 3, H, W]`` and return ``[B, D]`` (Inception-style, for FID);
    ``clips`` extractors take ``[B, 3, T, H, W]`` and return ``[B, D]`` (I3D-style, for FVD). Frames are
    resized to ``size`` (height, width) when given, and mapped to [-1, 1] for ``symmetric`` value ranges.
    A model handle: never persisted.
    """

    module: Any
    spec: ExtractorSpec
    weights: str = ""

    def __repr__(self) -> str:
        """Name the architecture and weights, never the parameters."""
        return f"FeatureExtractor({self.spec.name!r}, layout={self.spec.layout!r}, weights={self.weights!r})"


_extractors: dict[str, ExtractorSpec] = {}


def register_feature_extractor(name: str, factory: Callable[[], Any], *, layout: ExtractorLayout,
                               size: tuple[int, int] | None = None,
                               value_range: Literal["unit", "symmetric"] = "unit", description: str = "") -> None:
    """Make an architecture available to ``load_feature_extractor`` under ``name``.

    ``factory()`` builds the ``torch.nn.Module`` (random or built-in weights); the node loads the user's
    safetensors weights into it. Architectures are code, so they come from plugins (trusted, installed or
    named on the command line) and never from workflow files. Registering the same name again with the
    same factory is a no-op; with another factory it raises ``ValueError``.
    """
    spec = ExtractorSpec(name, factory, layout, size, value_range, description)
    old = _extractors.get(name)
    if old is not None and old.factory is not factory:
        raise ValueError(f"a feature extractor named {name!r} is already registered")
    _extractors[name] = spec


def feature_extractors() -> dict[str, ExtractorSpec]:
    """The registered architectures by name."""
    return dict(_extractors)


def _prepare(frames: torch.Tensor, spec: ExtractorSpec) -> torch.Tensor:
    import torch.nn.functional as functional

    if spec.size is not None and tuple(frames.shape[-2:]) != tuple(spec.size):
        frames = functional.interpolate(frames, size=spec.size, mode="bilinear", antialias=True, align_corners=False)
    return frames * 2 - 1 if spec.value_range == "symmetric" else frames


def extract_features(extractor: FeatureExtractor, frames: torch.Tensor, clip_frames: int | None = None,
                     stride: int | None = None, batch: int = 8, progress: ProgressFn | None = None) -> torch.Tensor:
    """Run ``extractor`` over frames ``[F, 3, H, W]`` in [0, 1] and return float32 features ``[N, D]``.

    ``frames`` layouts give one vector per frame. ``clips`` layouts give one per window of ``clip_frames``
    frames (default: the whole video as one window) taken every ``stride`` frames (default: non-overlapping).
    """
    import torch

    spec = extractor.spec
    device = next(iter(extractor.module.parameters()), torch.empty(0)).device
    total = int(frames.shape[0])
    if spec.layout == "frames":
        items = [(i, i + 1) for i in range(total)]
    else:
        length = clip_frames or total
        step = stride or length
        if length > total:
            raise ValueError(f"clip_frames={length} is longer than the video ({total} frames)")
        items = [(s, s + length) for s in range(0, total - length + 1, step)]
    out: list[torch.Tensor] = []
    groups = _chunks(len(items), batch)
    with torch.inference_mode():
        for n, (a, b) in enumerate(groups):
            if spec.layout == "frames":
                x = _prepare(frames[items[a][0]:items[b - 1][1]].to(device, torch.float32), spec)
            else:
                windows = [_prepare(frames[s:e].to(device, torch.float32), spec) for s, e in items[a:b]]
                x = torch.stack(windows).permute(0, 2, 1, 3, 4)  # [B, T, C, H, W] -> [B, C, T, H, W]
            y = extractor.module(x)
            if not isinstance(y, torch.Tensor) or y.ndim != 2 or y.shape[0] != b - a:
                shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
                raise ValueError(f"feature extractor {spec.name!r} returned {shape}; expected [{b - a}, D]")
            out.append(y.float().cpu())
            if progress is not None:
                progress(n + 1, len(groups))
    return torch.cat(out)
