"""Nodes: load a 2D ControlNet, and attach it with its control frames to a conditioning.

``unet3d_denoise`` and ``ddim_invert`` apply the controls a conditioning carries; chaining two
``controlnet_condition`` nodes is multi-ControlNet (residuals summed, each with its own scale).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from reelgraph import NodeInputError, RunContext, node, path_input

from .controlnet import ControlNetLoadError, controlnet_fingerprint
from .controlnet import load_controlnet as _load_controlnet
from .model_safety import ModelTooLarge
from .values import Conditioning, Control, ControlNet, Video

ControlNetSource = path_input("builtin:")
Fraction = Annotated[float, Field(ge=0, le=1)]


def _fingerprint(values: dict[str, Any], ctx: RunContext) -> Any:
    return controlnet_fingerprint(str(values["source"]))


@node("load_controlnet", category="models", output="controlnet", fingerprint=_fingerprint)
def load_controlnet(
    ctx: RunContext,
    source: ControlNetSource = "builtin:tiny",
    device: Literal["auto", "cpu", "cuda"] = "auto",
    dtype: Literal["float32", "float16", "bfloat16"] = "float32",
) -> ControlNet:
    """Load a 2D ControlNet (diffusers ``ControlNetModel``) to steer a UNet3D frame by frame.

    Its blocks must line up with the UNet3D it is used with (for ModelScope-style models, an SD 2.x
    ControlNet; for AnimateDiff, an SD 1.5 ControlNet, run per frame as ``AnimateDiffControlNetPipeline`` does);
    ``unet3d_denoise`` checks this, block by block, before it runs. Loaded once per process.
    Checked like a model folder (no custom code, no links out of the folder, ``ControlNetModel`` only), and
    refused with ``too_large`` when its config exceeds the memory limit, before it is allocated.

    Args:
        source: a diffusers ControlNet folder (``config.json`` + safetensors, or a ``.bin`` read through
            ``torch.load(weights_only=True)``), a single weight file in diffusers layout with its ``config.json``
            (or ``<stem>.json``) beside it, ``builtin:tiny``, the ControlNet trained for ``builtin:tiny`` on the
            Canny edges of its shapes world (shipped, sha256-checked: the shape follows the control clip's path),
            ``builtin:tiny-random``, a random one, or ``builtin:tiny-animatediff-controlnet``, a small random SD
            ControlNet matching ``builtin:tiny-animatediff``, both built locally on first use. The module is built
            on the meta device and filled from the file, so a load holds the weights once.
        device: ``auto`` picks CUDA when available, else the CPU.
        dtype: the weights' precision; ``float32`` on CPU.
    """
    try:
        return _load_controlnet(str(source), device=device, dtype=dtype, max_bytes=ctx.max_memory)
    except ModelTooLarge as exc:
        raise NodeInputError(str(exc), input="source", code="too_large") from exc
    except ControlNetLoadError as exc:
        raise NodeInputError(str(exc), input="source", code="model_load_failed") from exc


@node("controlnet_condition", category="conditioning", output="conditioning")
def controlnet_condition(
    conditioning: Conditioning,
    controlnet: ControlNet,
    video: Video,
    scale: Annotated[float, Field(ge=0, le=10)] = 1.0,
    start: Fraction = 0.0,
    end: Fraction = 1.0,
) -> Conditioning:
    """Add a ControlNet control (edge, depth or pose maps per frame) to a conditioning.

    The result is a new conditioning; the input one is unchanged. Chain several for multi-ControlNet: their
    residuals are summed, each with its own scale. Control frames are fed as RGB in [0, 1] at the output
    size (resized if needed); single-channel frames are repeated to RGB.

    Args:
        conditioning: from ``clip_text_encode`` (or another ``controlnet_condition``).
        controlnet: from ``load_controlnet``.
        video: the control frames, one per generated frame, or a single frame used for every frame.
        scale: strength of this control's residuals; 0 turns it off exactly.
        start: fraction of the denoising schedule where the control starts acting.
        end: fraction of the schedule where it stops (after ``start``).
    """
    if not start < end:
        raise NodeInputError(f"end ({end}) must be greater than start ({start})", input="end")
    channels = int(video.frames.shape[1])
    if channels not in (1, controlnet.conditioning_channels):
        raise NodeInputError(f"the ControlNet takes {controlnet.conditioning_channels}-channel control images, the "
                             f"video has {channels} channels", input="video")
    width = int(conditioning.prompt_embeds.shape[-1])
    if width != controlnet.cross_attention_dim:
        raise NodeInputError(f"the ControlNet attends to {controlnet.cross_attention_dim}-wide text embeddings, but "
                             f"this conditioning's are {width} wide (another text encoder)", input="controlnet")
    control = Control(controlnet=controlnet, frames=video.frames, scale=scale, start=start, end=end)
    return conditioning.with_control(control)
