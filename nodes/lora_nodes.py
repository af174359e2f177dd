"""Node: apply a LoRA (a file, or an in-memory adapter from a link such as ``tune_video.lora``) to a UNet3D (the
ModelScope family's ``UNet3DConditionModel`` or AnimateDiff's ``UNetMotionModel``) and its CLIP text encoder, as
patched copies (the inputs stay as they were).

Chaining ``load_lora`` nodes stacks LoRAs. Because the loaded models are shared between graph branches and
runs, nothing is modified in place: a branch without the LoRA keeps getting the base model's results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, NamedTuple

from pydantic import Field

from reelgraph import NodeInputError, RunContext, node, path_input

from .lora import LoraAdapter, LoraError, LoraFile, LoraValueError, merge_lora, read_lora, resolve_lora
from .values import TextEncoder, UNet3D

LoraSource = path_input("builtin:")
LoraScale = Annotated[float, Field(ge=-10, le=10)]


class LoraModels(NamedTuple):
    """The models with the LoRA applied."""

    unet: UNet3D
    text_encoder: TextEncoder


def _resolve(source: str) -> Path:
    """The LoRA file a source names (``builtin:tiny-lora`` is shipped and sha256-checked;
    ``builtin:tiny-lora-random`` is written on first use)."""
    if source.startswith("builtin:"):
        from .tiny_models import TINY_LORA_RANDOM_SOURCE, TINY_LORA_SOURCE, WeightsMismatch, builtin_lora

        try:
            return builtin_lora(source)
        except KeyError:
            raise NodeInputError(f"unknown builtin LoRA {source!r}; the builtins are {TINY_LORA_SOURCE!r} (trained) "
                                 f"and {TINY_LORA_RANDOM_SOURCE!r}", input="source", code="model_load_failed") from None
        except WeightsMismatch as exc:
            raise NodeInputError(f"{source}: {exc}", input="source", code="model_load_failed") from None
    return Path(source)


def _fingerprint(values: dict[str, Any], ctx: RunContext) -> Any:
    """The LoRA file's size and mtime (or the builtin's version), so an edited file is applied again."""
    if values.get("source") is None:
        return None  # the LoRA comes from a link, whose cache key already identifies it
    source = str(values["source"])
    if source.startswith("builtin:"):
        from .tiny_models import WeightsMismatch, builtin_lora_version

        try:
            return [source, builtin_lora_version(source)]
        except (KeyError, WeightsMismatch):  # load_lora says why
            return [source, None]
    try:
        stat = Path(source).stat()
    except OSError:
        return [source, None]
    return [source, stat.st_size, stat.st_mtime_ns]


def _read_source(source: str) -> tuple[LoraFile, str]:
    """Read the LoRA file a ``source`` names; its parsed layers and the name recorded on the models.

    A bad value inside the file (metadata of the wrong type, a regex ``alpha_pattern`` key, a NaN alpha) is
    ``invalid_value`` naming the key; a file that cannot be read or parsed at all is ``model_load_failed``.
    """
    path = _resolve(source)
    if not path.is_file():
        raise NodeInputError(f"LoRA file {str(path)!r} does not exist", input="source", code="file_not_found")
    try:
        lora = read_lora(path)
    except LoraValueError as exc:
        raise NodeInputError(f"{path.name}: {exc}", input="source", code="invalid_value") from exc
    except LoraError as exc:
        raise NodeInputError(str(exc), input="source", code="model_load_failed") from exc
    return lora, source if source.startswith("builtin:") else path.name


@node("load_lora", category="models", fingerprint=_fingerprint)
def load_lora(
    unet: UNet3D,
    text_encoder: TextEncoder,
    source: LoraSource | None = None,
    scale_unet: LoraScale = 1.0,
    scale_text: LoraScale = 1.0,
    lora: LoraAdapter | None = None,
) -> LoraModels:
    """Apply a LoRA (style, concept or motion adapter) to the UNet3D (ModelScope or AnimateDiff) and the text encoder.

    Each targeted weight becomes ``W + scale * (alpha / rank) * up @ down`` in a patched copy of the model
    that shares every other weight with it; the input models are never changed, so other branches and
    later runs without the LoRA get the base results. Chain nodes to stack LoRAs. A key that matches no
    layer (a LoRA made for another architecture) is an error listing the keys. The LoRA comes from a file
    (``source``) or from a link (``lora``, e.g. ``tune_video.lora``): give exactly one of them.

    A LoRA file is data: its ``alpha_pattern`` keys are module names or ``*`` globs, never run as regular
    expressions, and a bad value in it (metadata of the wrong type, a NaN or infinite alpha, a regex or
    over-long pattern key) is ``invalid_value`` on ``source``, naming the key.

    Args:
        unet: the UNet3D to adapt (``load_model.unet`` or another ``load_lora.unet``).
        text_encoder: the text encoder to adapt (returned as is when the LoRA has no text-encoder part).
        source: a ``.safetensors`` LoRA file in diffusers/PEFT (``lora_A``/``lora_B``), kohya/A1111
            (``lora_down``/``lora_up``/``alpha``, LoCon convolutions included) or Text-To-Video-Finetuning format
            (its ``full_weights`` files and its webui files with ModelScope's ``input_blocks.*`` names; see
            docs/models.md); on an AnimateDiff UNet also SD 1.5 LoRAs (kohya files in diffusers' or the LDM
            ``input_blocks_*`` names) and motion LoRAs (the AnimateDiff project's ``.ckpt`` files or diffusers'
            conversion of them; see docs/controlnet_lora.md); or ``builtin:tiny-lora``, the LoRA trained for
            ``builtin:tiny`` that teaches it a shape it has never seen, a horizontal bar (``a red bar moving
            left``; shipped, sha256-checked), or ``builtin:tiny-lora-random``, a random one generated
            reproducibly on first use. Pickle files load only if they hold nothing but tensors. Leave empty when
            ``lora`` is linked.
        scale_unet: multiplier of the UNet3D part; 0 leaves the UNet3D unchanged.
        scale_text: multiplier of the text-encoder part; 0 leaves the text encoder unchanged.
        lora: an in-memory LoRA from a link (``tune_video.lora``) instead of a file; applied exactly as the
            file it would save to.
    """
    if (source is None) == (lora is None):
        if source is None:
            raise NodeInputError("load_lora needs a LoRA: set source (a file or builtin:tiny-lora) or link lora "
                                 "(e.g. from tune_video.lora)", input="source", code="missing_input")
        raise NodeInputError("give the LoRA either as source (a file) or as lora (a link), not both",
                             input="lora", code="invalid_value")
    if lora is not None:
        parsed, name, where = lora.as_lora_file(), lora.name, "lora"
    else:
        parsed, name = _read_source(str(source))
        where = "source"
    targets: dict[str, Any] = {}
    problems: list[str] = []
    for component, model in (("unet", unet.module), ("text_encoder", text_encoder.module)):
        try:
            targets[component] = resolve_lora(parsed.layers[component], model, component, parsed.kohya_keys)
        except LoraError as exc:
            problems.append(str(exc))
    if problems:
        raise NodeInputError(f"{name} does not fit this model: " + "; ".join(problems), input=where)
    unet_module = merge_lora(unet.module, targets["unet"], scale_unet)
    text_module = merge_lora(text_encoder.module, targets["text_encoder"], scale_text)
    if unet_module is not unet.module:
        unet = UNet3D(module=unet_module, source=unet.source, vae_scale_factor=unet.vae_scale_factor,
                      loras=(*unet.loras, name))
    if text_module is not text_encoder.module:
        text_encoder = TextEncoder(tokenizer=text_encoder.tokenizer, module=text_module, source=text_encoder.source,
                                   loras=(*text_encoder.loras, name))
    return LoraModels(unet, text_encoder)
