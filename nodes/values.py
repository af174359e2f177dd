"""Value types that travel on graph wires between diffusion nodes.

These are plain classes so that importing this module never imports torch or diffusers: the engine can
load and validate graphs on machines without the heavy libraries. Tensors are only touched through their
attributes (``ndim``, ``shape``), and torch is imported lazily where a method really needs it.

``Video``, ``Latents`` and ``Conditioning`` implement the engine's persistence protocol
(``__reelgraph_state__`` / ``__reelgraph_restore__``): a dict of tensors plus JSON-able metadata. Model
handles (``UNet3D``, ``VAE``, ``TextEncoder``, ``Scheduler``, ``ControlNet``) wrap loaded modules and are
not persisted; they are reloaded from their ``source`` instead. A ``Conditioning`` that carries ControlNet
controls holds such a handle, so it opts out of disk persistence (see ``Conditioning.__reelgraph_state__``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "SCHEDULER_CLASSES",
    "SCHEDULER_TYPES",
    "UNET3D_FAMILIES",
    "VAE",
    "Conditioning",
    "Control",
    "ControlNet",
    "Latents",
    "Scheduler",
    "TextEncoder",
    "UNet3D",
    "Video",
]

#: Scheduler kinds that ``Scheduler.create`` understands, besides ``None`` (the model's own scheduler).
SCHEDULER_TYPES: tuple[str, ...] = ("ddim", "dpm++", "euler")

#: The diffusers scheduler classes a model folder may name (``Scheduler.create`` builds no other class): the
#: noise schedulers of the text-to-video and Stable Diffusion families. Any other diffusers class, a model
#: (``UNet3DConditionModel``) say, is refused, so a scheduler slot can never make reelgraph build a network.
SCHEDULER_CLASSES: tuple[str, ...] = (
    "DDIMScheduler", "DDIMInverseScheduler", "DDPMScheduler", "DEISMultistepScheduler",
    "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "EulerAncestralDiscreteScheduler",
    "EulerDiscreteScheduler", "HeunDiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "KDPM2DiscreteScheduler",
    "LMSDiscreteScheduler", "PNDMScheduler", "UniPCMultistepScheduler",
)


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
class ControlNet:
    """Handle on a loaded 2D ``ControlNetModel`` and the id of the source it came from.

    The same module steers every frame: samplers run it on the frames folded into the batch.
    """

    module: Any
    source: str

    @property
    def conditioning_channels(self) -> int:
        """Channels of the control images the model takes (3 for RGB edge, depth and pose maps)."""
        return int(self.module.config.conditioning_channels)

    @property
    def cross_attention_dim(self) -> int:
        """Width of the text embeddings the model attends to; must match the conditioning's."""
        return int(self.module.config.cross_attention_dim)

    def __repr__(self) -> str:
        """Name the source, not the module tree."""
        return f"ControlNet(source={self.source!r})"


@dataclass(eq=False, frozen=True)
class Control:
    """One ControlNet steering a generation: the model, its control frames and when and how hard it acts.

    ``frames`` are ``[F, C, H, W]`` in ``[0, 1]``: one per generated frame, or a single frame used for
    every frame. ``scale`` multiplies the residuals; the control acts on the steps whose position ``i`` in
    a schedule of ``n`` steps satisfies ``start <= i / n`` and ``(i + 1) / n <= end`` (diffusers'
    ``control_guidance_start``/``end``).
    """

    controlnet: ControlNet
    frames: Tensor
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0

    def __post_init__(self) -> None:
        """Validate the frames' layout and the window where the mistake was made."""
        _check_ndim("Control.frames", self.frames, 4, "[F, C, H, W]")
        if not 0.0 <= self.start < self.end <= 1.0:
            raise ValueError(f"Control needs 0 <= start < end <= 1, got start={self.start}, end={self.end}")

    def active(self, step: int, total: int) -> bool:
        """Whether the control acts on step ``step`` of ``total`` (the pipelines' ``controlnet_keep``)."""
        return not (step / total < self.start or (step + 1) / total > self.end)

    def __repr__(self) -> str:
        """Name the model and show the frames' shape and the settings."""
        return (f"Control({self.controlnet!r}, frames={tuple(self.frames.shape)}, scale={self.scale:g}, "
                f"start={self.start:g}, end={self.end:g})")


@dataclass(eq=False)
class Conditioning:
    """Text conditioning for the UNet: ``prompt_embeds`` ``[B, L, D]`` and optional ``negative_embeds``,
    plus the ControlNet ``controls`` that steer the generation (applied in order, residuals summed).

    ``negative_embeds`` is ``None`` when the conditioning was encoded for guidance scale <= 1, in which case
    classifier-free guidance cannot be used with it.
    """

    prompt_embeds: Tensor
    negative_embeds: Tensor | None = None
    controls: tuple[Control, ...] = ()

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
        self.controls = tuple(self.controls)
        for control in self.controls:
            if not isinstance(control, Control):
                raise ValueError(f"Conditioning.controls must hold Control values, got {type(control).__name__}")

    def with_control(self, control: Control) -> Conditioning:
        """A new conditioning with ``control`` appended; this one is left unchanged (values are shared)."""
        return Conditioning(self.prompt_embeds, self.negative_embeds, (*self.controls, control))

    def __repr__(self) -> str:
        """Show shapes only."""
        neg = None if self.negative_embeds is None else tuple(self.negative_embeds.shape)
        text = f"Conditioning(prompt_embeds={tuple(self.prompt_embeds.shape)}, negative_embeds={neg}"
        return text + (f", controls={len(self.controls)})" if self.controls else ")")

    def __reelgraph_state__(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Persistence protocol: one or two embedding tensors; the metadata says which.

        A conditioning with controls holds loaded ControlNet modules, which are never written to disk. Its
        state then carries the controls themselves as metadata, which is not JSON, and the disk cache
        keeps such a value in memory only (the denoised latents downstream still persist).
        """
        tensors = {"prompt_embeds": self.prompt_embeds}
        if self.negative_embeds is not None:
            tensors["negative_embeds"] = self.negative_embeds
        meta: dict[str, Any] = {"has_negative": self.negative_embeds is not None}
        if self.controls:
            meta["controls"] = self.controls
        return tensors, meta

    @classmethod
    def __reelgraph_restore__(cls, tensors: dict[str, Tensor], meta: dict[str, Any]) -> Conditioning:
        """Persistence protocol: rebuild from ``__reelgraph_state__`` output (never with controls)."""
        negative = tensors["negative_embeds"] if meta.get("has_negative") else None
        return cls(prompt_embeds=tensors["prompt_embeds"], negative_embeds=negative)


#: ``UNet3D.family`` values: ModelScope/Zeroscope's ``UNet3DConditionModel`` and AnimateDiff's
#: ``UNetMotionModel`` (a Stable Diffusion 1.5 UNet inflated with motion modules).
UNET3D_FAMILIES: tuple[str, ...] = ("modelscope", "animatediff")


@dataclass(eq=False)
class UNet3D:
    """Handle on a loaded video UNet and the id of the source it came from.

    Two families share this handle (and the ``UNet3D`` port type), because their forward passes take the same
    ``[B, C, F, h, w]`` latents, timestep, text states and ControlNet residuals: ModelScope/Zeroscope's
    ``UNet3DConditionModel`` and AnimateDiff's ``UNetMotionModel``. ``family`` says which; the samplers
    follow the family's diffusers pipelines where they differ (AnimateDiff's UNet wants the text states
    repeated per frame, its pipelines step the scheduler on the ``[B, C, F, h, w]`` latents, and its motion
    modules' positional encoding bounds the frames of one call, ``max_frames``).

    ``vae_scale_factor`` is the spatial factor of the VAE shipped with the same model, so that samplers can
    turn pixel sizes into latent sizes exactly as the diffusers pipelines do. ``loras`` names the LoRA files
    merged into ``module`` (a patched copy; the loaded model itself is never changed).
    """

    module: Any
    source: str
    vae_scale_factor: int = 8
    loras: tuple[str, ...] = ()

    @property
    def family(self) -> str:
        """``"animatediff"`` for a ``UNetMotionModel``, else ``"modelscope"`` (``UNet3DConditionModel``)."""
        return "animatediff" if type(self.module).__name__ == "UNetMotionModel" else "modelscope"

    @property
    def max_frames(self) -> int | None:
        """The most frames one UNet call can take: an AnimateDiff motion module's positional-encoding length
        (``motion_max_seq_length``; it was trained on 16-32 frames), ``None`` where there is no such bound."""
        if self.family != "animatediff":
            return None
        return int(self.module.config.motion_max_seq_length)

    def __repr__(self) -> str:
        """Name the source and the LoRAs, not the module tree."""
        extra = f", loras={list(self.loras)}" if self.loras else ""
        return f"UNet3D(source={self.source!r}{extra})"


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
    """Handle on a tokenizer plus ``CLIPTextModel`` pair and its source id; ``loras`` as for ``UNet3D``."""

    tokenizer: Any
    module: Any
    source: str
    loras: tuple[str, ...] = ()

    def __repr__(self) -> str:
        """Name the source and the LoRAs, not the module tree."""
        extra = f", loras={list(self.loras)}" if self.loras else ""
        return f"TextEncoder(source={self.source!r}{extra})"


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

        The model's own class must be one of ``SCHEDULER_CLASSES`` (a diffusers ``SchedulerMixin``).
        """
        import diffusers

        if kind is None:
            if self.class_name not in SCHEDULER_CLASSES:
                raise ValueError(f"scheduler class {self.class_name!r} of {self.source!r} is not one reelgraph builds; "
                                 f"allowed: {', '.join(SCHEDULER_CLASSES)}")
            cls = getattr(diffusers, self.class_name, None)
            if cls is None or not issubclass(cls, diffusers.SchedulerMixin):
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
