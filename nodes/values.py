"""Value types that travel on graph wires between diffusion nodes.

These are plain classes so that importing this module never imports torch or diffusers: the engine can
load and validate graphs on machines without the heavy libraries. Tensors are only touched through their
attributes (``ndim``, ``shape``), and torch is imported lazily where a method really needs it.

``Video``, ``Latents`` and ``Conditioning`` implement the engine's persistence protocol
(``__reelgraph_state__`` / ``__reelgraph_restore__``): a dict of tensors plus JSON-able metadata. Model
handles (``UNet3D``, ``VAE``, ``TextEncoder``, ``Scheduler``) wrap loaded modules and are not persisted;
they are reloaded from their ``source`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "SCHEDULER_TYPES",
    "VAE",
    "Conditioning",
    "Latents",
    "Scheduler",
    "TextEncoder",
    "UNet3D",
    "Video",
]

#: Scheduler kinds that ``Scheduler.create`` understands, besides ``None`` (the model's own scheduler).
SCHEDULER_TYPES: tuple[str, ...] = ("ddim", "dpm++", "euler")


def _check_ndim(name: str, tensor: Any, ndim: int, layout: str) -> None:
    """Raise ``ValueError`` unless ``tensor`` looks like a tensor with ``ndim`` dimensions."""
    actual = getattr(tensor, "ndim", None)
    if actual != ndim:
        shape = tuple(getattr(tensor, "shape", ()))
        raise ValueError(f"{name} must be a {ndim}-D tensor {layout}, got shape {shape} ({type(tensor).__name__})")


@dataclass(eq=False)
class Video:
    """A clip of RGB frames: float32 ``frames`` of shape ``[F, C, H, W]`` in ``[0, 1]`` and its ``fps``.

    This layout is what ``TextToVideoSDPipeline(output_type="pt")`` returns per batch item, and what the
    VAE consumes frame by frame, so no transposition is needed on the common paths.
    """

    frames: Tensor
    fps: float = 8.0

    def __post_init__(self) -> None:
        """Validate the layout and the frame rate early, where the mistake was made."""
        _check_ndim("Video.frames", self.frames, 4, "[F, C, H, W]")
        if self.frames.shape[0] < 1:
            raise ValueError("Video.frames must hold at least one frame")
        self.fps = float(self.fps)
        if not self.fps > 0:
            raise ValueError(f"Video.fps must be positive, got {self.fps}")

    @property
    def num_frames(self) -> int:
        """Number of frames ``F``."""
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        """Frame height in pixels."""
        return int(self.frames.shape[2])

    @property
    def width(self) -> int:
        """Frame width in pixels."""
        return int(self.frames.shape[3])

    def __repr__(self) -> str:
        """Show the shape and rate, never the pixel data."""
        return f"Video(frames={tuple(self.frames.shape)}, fps={self.fps:g})"

    def __reelgraph_state__(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Persistence protocol: the frames tensor and the frame rate."""
        return {"frames": self.frames}, {"fps": self.fps}

    @classmethod
    def __reelgraph_restore__(cls, tensors: dict[str, Tensor], meta: dict[str, Any]) -> Video:
        """Persistence protocol: rebuild from ``__reelgraph_state__`` output."""
        return cls(frames=tensors["frames"], fps=float(meta["fps"]))


@dataclass(eq=False)
class Latents:
    """Video latents of shape ``[B, C, F, h, w]``, already multiplied by the VAE's scaling factor.

    This is the layout ``UNet3DConditionModel`` consumes, so the denoiser takes it as is.
    """

    tensor: Tensor

    def __post_init__(self) -> None:
        """Validate the layout early."""
        _check_ndim("Latents.tensor", self.tensor, 5, "[B, C, F, h, w]")

    @property
    def num_frames(self) -> int:
        """Number of frames ``F``."""
        return int(self.tensor.shape[2])

    def __repr__(self) -> str:
        """Show the shape and dtype, never the data."""
        return f"Latents(tensor={tuple(self.tensor.shape)}, dtype={self.tensor.dtype})"

    def __reelgraph_state__(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Persistence protocol: the latent tensor and no metadata."""
        return {"latents": self.tensor}, {}

    @classmethod
    def __reelgraph_restore__(cls, tensors: dict[str, Tensor], meta: dict[str, Any]) -> Latents:
        """Persistence protocol: rebuild from ``__reelgraph_state__`` output."""
        return cls(tensor=tensors["latents"])


@dataclass(eq=False)
class Conditioning:
    """Text conditioning for the UNet: ``prompt_embeds`` ``[B, L, D]`` and optional ``negative_embeds``.

    ``negative_embeds`` is ``None`` when the conditioning was encoded for guidance scale <= 1, in which case
    classifier-free guidance cannot be used with it.
    """

    prompt_embeds: Tensor
    negative_embeds: Tensor | None = None

    def __post_init__(self) -> None:
        """Validate that both embeddings agree in shape."""
        _check_ndim("Conditioning.prompt_embeds", self.prompt_embeds, 3, "[B, L, D]")
        if self.negative_embeds is not None:
            _check_ndim("Conditioning.negative_embeds", self.negative_embeds, 3, "[B, L, D]")
            if tuple(self.negative_embeds.shape) != tuple(self.prompt_embeds.shape):
                raise ValueError(
                    f"Conditioning.negative_embeds shape {tuple(self.negative_embeds.shape)} differs from "
                    f"prompt_embeds shape {tuple(self.prompt_embeds.shape)}"
                )

    def __repr__(self) -> str:
        """Show shapes only."""
        neg = None if self.negative_embeds is None else tuple(self.negative_embeds.shape)
        return f"Conditioning(prompt_embeds={tuple(self.prompt_embeds.shape)}, negative_embeds={neg})"

    def __reelgraph_state__(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Persistence protocol: one or two embedding tensors; the metadata says which."""
        tensors = {"prompt_embeds": self.prompt_embeds}
        if self.negative_embeds is not None:
            tensors["negative_embeds"] = self.negative_embeds
        return tensors, {"has_negative": self.negative_embeds is not None}

    @classmethod
    def __reelgraph_restore__(cls, tensors: dict[str, Tensor], meta: dict[str, Any]) -> Conditioning:
        """Persistence protocol: rebuild from ``__reelgraph_state__`` output."""
        negative = tensors["negative_embeds"] if meta.get("has_negative") else None
        return cls(prompt_embeds=tensors["prompt_embeds"], negative_embeds=negative)


@dataclass(eq=False)
class UNet3D:
    """Handle on a loaded ``UNet3DConditionModel`` and the id of the source it came from.

    ``vae_scale_factor`` is the spatial factor of the VAE shipped with the same model, so that samplers can
    turn pixel sizes into latent sizes exactly as the diffusers pipelines do.
    """

    module: Any
    source: str
    vae_scale_factor: int = 8

    def __repr__(self) -> str:
        """Name the source, not the module tree."""
        return f"UNet3D(source={self.source!r})"


@dataclass(eq=False)
class VAE:
    """Handle on a loaded ``AutoencoderKL`` (an image VAE applied per frame) and its source id."""

    module: Any
    source: str

    @property
    def scale_factor(self) -> int:
        """Spatial downscale factor: ``2 ** (len(block_out_channels) - 1)``, as diffusers computes it."""
        return 2 ** (len(self.module.config.block_out_channels) - 1)

    @property
    def temporal_factor(self) -> int:
        """Temporal downscale factor; 1 because ``AutoencoderKL`` encodes every frame on its own."""
        return 1

    @property
    def scaling_factor(self) -> float:
        """Multiplier applied to the posterior before latents are handed to the UNet."""
        return float(self.module.config.scaling_factor)

    def __repr__(self) -> str:
        """Name the source, not the module tree."""
        return f"VAE(source={self.source!r}, factor={self.scale_factor})"


@dataclass(eq=False)
class TextEncoder:
    """Handle on a tokenizer plus ``CLIPTextModel`` pair and its source id."""

    tokenizer: Any
    module: Any
    source: str

    def __repr__(self) -> str:
        """Name the source, not the module tree."""
        return f"TextEncoder(source={self.source!r})"


@dataclass(eq=False)
class Scheduler:
    """The model's noise-scheduler configuration (a plain dict) and class name, plus its source id.

    Diffusers schedulers are stateful (step index, multistep history), so a sampler must never share one
    instance between runs: ``create`` builds a fresh instance every time.
    """

    class_name: str
    config: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def create(self, kind: str | None = None) -> Any:
        """Build a fresh diffusers scheduler: the model's own class (``kind=None``) or one of
        ``"ddim"``, ``"dpm++"`` (DPM-Solver++ multistep) or ``"euler"``, always from the model's config,
        which is how diffusers users swap schedulers (``Cls.from_config(pipe.scheduler.config)``).
        """
        import diffusers

        if kind is None:
            cls = getattr(diffusers, self.class_name, None)
            if cls is None:
                raise ValueError(f"unknown scheduler class {self.class_name!r} in {self.source!r}")
        elif kind == "ddim":
            cls = diffusers.DDIMScheduler
        elif kind == "dpm++":
            cls = diffusers.DPMSolverMultistepScheduler
        elif kind == "euler":
            cls = diffusers.EulerDiscreteScheduler
        else:
            raise ValueError(f"scheduler_type must be None or one of {SCHEDULER_TYPES}, got {kind!r}")
        return cls.from_config(self.config)

    def __repr__(self) -> str:
        """Name the class and source."""
        return f"Scheduler({self.class_name}, source={self.source!r})"
