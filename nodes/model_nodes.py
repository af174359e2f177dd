"""Node: load a text-to-video model (a ModelScope or AnimateDiff / Stable Diffusion 1.5 diffusers folder, a single
SD 1.5 checkpoint with a motion adapter, or a ``builtin:`` model; optionally a single-file UNet3D) as four typed
handles."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, NamedTuple

from reelgraph import NodeInputError, RunContext, node, path_input

from .imports import announce
from .model_loading import ModelLoadError, ModelTooLarge, input_fingerprint, source_fingerprint, unet_fingerprint
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
WeightPath = path_input()


def _model_fingerprint(values: dict[str, Any], ctx: RunContext) -> Any:
    """The source's content, and where and how it will run: the resolved device and torch's thread count change
    the numbers every downstream node computes, so they are part of every downstream key."""
    from .model_loading import resolve_device

    announce(ctx, "torch")  # the first import of torch takes seconds: say so
    return [source_fingerprint(values["source"]), resolve_device(values.get("device", "auto")), configure_threads()]


def _load_fingerprint(values: dict[str, Any], ctx: RunContext) -> Any:
    """The source's fingerprint, and the content of the single UNet file and its config, the motion adapter and the
    checkpoint's config when given (a single-file source's own size and mtime too)."""
    unet, config = values.get("unet"), values.get("unet_config")
    adapter, checkpoint_config = values.get("motion_adapter"), values.get("config")
    key = _model_fingerprint(values, ctx)
    if unet is not None or config is not None:
        key = [key, unet_fingerprint(unet), unet_fingerprint(config, config=True)]
    if adapter is not None or checkpoint_config is not None or Path(str(values["source"])).expanduser().is_file():
        key = [key, input_fingerprint(str(values["source"])), input_fingerprint(adapter),
               input_fingerprint(checkpoint_config)]
    return key


@node("load_model", category="models", fingerprint=_load_fingerprint)
def load_model(
    ctx: RunContext,
    source: ModelSource = "builtin:tiny",
    device: Literal["auto", "cpu", "cuda"] = "auto",
    dtype: Literal["float32", "float16", "bfloat16"] = "float32",
    memory_format: Literal["contiguous", "channels_last"] = "contiguous",
    compile: bool = False,
    variant: Literal["auto", "default", "fp16", "bf16"] = "auto",
    unet: WeightPath | None = None,
    unet_config: WeightPath | None = None,
    motion_adapter: WeightPath | None = None,
    config: WeightPath | None = None,
) -> ModelParts:
    """Load a text-to-video model once per process: a UNet3D one (ModelScope/Zeroscope layout) or an AnimateDiff one
    (a Stable Diffusion 1.5 UNet with motion modules; the unet output then holds a diffusers ``UNetMotionModel``).

    Each part reads its weight files in their stored precision and casts them once to ``dtype``: ``.safetensors``
    (streamed), or ``.bin``/``.pt`` pickles read through ``torch.load(weights_only=True)`` (which refuses a pickle
    that would run code); safetensors win where both exist. Every part's files are checked against its config
    before anything is built, and all problems are reported together. The same unchanged source is loaded once
    and shared by every run; a folder whose files change (size or mtime) is loaded again.

    A model folder is data: nothing in it runs. Its classes must be the text-to-video ones (UNet3D, or for
    AnimateDiff UNetMotionModel / UNet2DConditionModel and MotionAdapter; AutoencoderKL, CLIP text model and
    tokenizer, a diffusers noise scheduler); configs asking for custom code
    (``auto_map``, ``custom_pipeline``) and symbolic links leading out of the folder are refused
    (``model_load_failed``), and a model whose configs exceed the memory limit is refused before it is
    allocated (``too_large``). See docs/models.md (which layouts load) and docs/security.md.

    Args:
        source: a diffusers folder with ``model_index.json`` (relative to the workflow's folder): ModelScope
            (``TextToVideoSDPipeline``), AnimateDiff (``AnimateDiffPipeline``) or Stable Diffusion 1.5
            (``StableDiffusionPipeline``, with ``motion_adapter``); a single SD 1.5 checkpoint (``.safetensors``,
            or a pickle read through ``weights_only``, in the original LDM key layout, with ``motion_adapter``);
            ``builtin:tiny-animatediff``, a small random AnimateDiff model built locally on first use;
            ``builtin:tiny``, the small model shipped with reelgraph, trained on coloured shapes moving
            (prompts like ``a red circle moving left``, 8 frames of 32x32; its sha256 is checked on load); or
            ``builtin:tiny-random``, the same architecture with random weights (fast tests; makes noise).
        device: ``auto`` picks CUDA when available, else the CPU.
        dtype: the weights' precision in memory; ``float32`` on CPU. ``float16``/``bfloat16`` halve the memory
            (with ``variant`` ``auto``, a folder's ``*.fp16.*`` files are read as they are).
        memory_format: ``channels_last`` stores the 2-D convolution weights channels-last, which some GPUs
            run faster (bench/optim_flags.py measures it; see bench/RESULTS.md).
        compile: wrap the UNet3D in ``torch.compile``; the first denoising step compiles (minutes on a CPU),
            later steps may run faster. Worth it for long runs, not for one short clip.
        variant: which weight files each part reads: ``auto`` the ones stored in ``dtype`` when the folder has
            them (``*.fp16.safetensors`` for ``float16``, ``*.bf16.*`` for ``bfloat16``, the plain files for
            ``float32``), else what exists; ``default`` the files without a variant suffix; ``fp16`` / ``bf16``
            only those.
        unet: replaces the folder's UNet3D: a single weight file in ModelScope's original layout
            (``text2video_pytorch_model.pth`` or ``.safetensors``) or in diffusers' layout, or an
            sd-webui-text2video model folder holding ``text2video_pytorch_model.pth`` (e.g. Zeroscope's
            ``zs2_576w/``). The VAE, text encoder, tokenizer and scheduler still come from ``source``.
        unet_config: the diffusers config of ``unet`` (a folder with ``config.json``, or the file); by default
            the first that fits of ``source``'s ``unet/config.json`` and the shipped ModelScope 1.7B config
            (Zeroscope and potat1 share it).
        motion_adapter: AnimateDiff motion modules for a Stable Diffusion 1.5 source: a diffusers
            ``MotionAdapter`` folder, or a motion-module file as the AnimateDiff project ships it
            (``mm_sd_v15_v2.ckpt``, ``v3_sd15_mm.ckpt``, read through ``torch.load(weights_only=True)``, or
            ``.safetensors``; the adapter's shape is read from its tensors). On an AnimateDiff folder it replaces
            the folder's motion modules. A LoRA or a ModelScope file given here is refused, saying what it is.
        config: the configs of a single-checkpoint source: a diffusers folder (``model_index.json``, ``unet/``,
            ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``; its weights are not read). Default: the
            Stable Diffusion 1.5 configs and CLIP tokenizer shipped with reelgraph.
    """
    configure_threads()
    announce(ctx, "diffusers", "transformers")
    ctx.stage(f"loading {source}")
    try:
        unet_h, vae, text_encoder, scheduler = _load_model(
            source, device=device, dtype=dtype, memory_format=memory_format, compile=compile, max_bytes=ctx.max_memory,
            variant=variant, unet=None if unet is None else str(unet),
            unet_config=None if unet_config is None else str(unet_config),
            motion_adapter=None if motion_adapter is None else str(motion_adapter),
            config=None if config is None else str(config))
    except ModelTooLarge as exc:
        raise NodeInputError(str(exc), input="source", code="too_large") from exc
    except ModelLoadError as exc:
        raise NodeInputError(str(exc), input=exc.input, code="model_load_failed") from exc
    return ModelParts(unet_h, vae, text_encoder, scheduler)
