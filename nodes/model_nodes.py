"""Node: load a text-to-video model (diffusers folder or ``builtin:tiny``) as four typed handles."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

from reelgraph import NodeInputError, RunContext, node, path_input

from .model_loading import ModelLoadError, ModelTooLarge, source_fingerprint
from .model_loading import load_model as _load_model
from .threads import configure_threads
from .values import VAE, Scheduler, TextEncoder, UNet3D


class ModelParts(NamedTuple):
    """The parts of a text-to-video model, each on its own output."""

    unet: UNet3D
    vae: VAE
    text_encoder: TextEncoder
    scheduler: Scheduler


ModelSource = path_input("builtin:")


def _model_fingerprint(values: dict[str, Any], ctx: RunContext) -> Any:
    """The source's content, and where and how it will run: the resolved device and torch's thread count change
    the numbers every downstream node computes, so they are part of every downstream key."""
    from .model_loading import resolve_device

    return [source_fingerprint(values["source"]), resolve_device(values.get("device", "auto")), configure_threads()]


@node("load_model", category="models", fingerprint=_model_fingerprint)
def load_model(
    ctx: RunContext,
    source: ModelSource = "builtin:tiny",
    device: Literal["auto", "cpu", "cuda"] = "auto",
    dtype: Literal["float32", "float16", "bfloat16"] = "float32",
    memory_format: Literal["contiguous", "channels_last"] = "contiguous",
    compile: bool = False,
) -> ModelParts:
    """Load a UNet3D text-to-video model (ModelScope/Zeroscope layout) once per process.

    Weights load from safetensors only; a folder with only ``.bin``/``.ckpt`` weights is refused (convert
    it once; the error shows how). The same unchanged source is loaded once and shared by every run; a
    folder whose files change (size or mtime) is loaded again.

    A model folder is data: nothing in it runs. Its classes must be the text-to-video ones (UNet3D,
    AutoencoderKL, CLIP text model and tokenizer, a diffusers noise scheduler); configs asking for custom code
    (``auto_map``, ``custom_pipeline``) and symbolic links leading out of the folder are refused
    (``model_load_failed``), and a model whose configs exceed the memory limit is refused before it is
    allocated (``too_large``). See docs/security.md.

    Args:
        source: a diffusers folder with ``model_index.json`` (relative to the workflow's folder);
            ``builtin:tiny``, the small model shipped with reelgraph, trained on coloured shapes moving
            (prompts like ``a red circle moving left``, 8 frames of 32x32; its sha256 is checked on load); or
            ``builtin:tiny-random``, the same architecture with random weights (fast tests; makes noise).
        device: ``auto`` picks CUDA when available, else the CPU.
        dtype: the weights' precision; ``float32`` on CPU.
        memory_format: ``channels_last`` stores the 2-D convolution weights channels-last, which some GPUs
            run faster (bench/optim_flags.py measures it; see bench/RESULTS.md).
        compile: wrap the UNet3D in ``torch.compile``; the first denoising step compiles (minutes on a CPU),
            later steps may run faster. Worth it for long runs, not for one short clip.
    """
    configure_threads()
    try:
        unet, vae, text_encoder, scheduler = _load_model(source, device=device, dtype=dtype,
                                                             memory_format=memory_format, compile=compile,
                                                             max_bytes=ctx.max_memory)
    except ModelTooLarge as exc:
        raise NodeInputError(str(exc), input="source", code="too_large") from exc
    except ModelLoadError as exc:
        raise NodeInputError(str(exc), input="source", code="model_load_failed") from exc
    return ModelParts(unet, vae, text_encoder, scheduler)
