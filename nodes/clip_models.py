"""CLIP for quality metrics: a local ``CLIPModel`` folder or ``builtin:tiny-clip``, and its embeddings.

CLIP text alignment and frame consistency need a joint image-text model. Sources are a folder written by
``CLIPModel.save_pretrained`` plus its processor files (tokenizer files and ``preprocessor_config.json``)
or ``builtin:tiny``, a tiny random CLIP built here from a fixed config and seed and written once, like
``tiny_models`` does for the text-to-video model, to ``$REELGRAPH_HOME/models/tiny-clip-v1``. Nothing is
ever downloaded, and weights are read from safetensors only.

Images are preprocessed in torch, following the folder's ``preprocessor_config.json`` (resize the shortest
side with bicubic interpolation, centre crop, normalise with the model's mean and std), so frames never
round-trip through 8-bit PIL images and no torchvision is needed. Without a resize the pixel values equal
``CLIPImageProcessor``'s; with one they differ by about 1/255 on average (PIL resizes 8-bit images with a
slightly different bicubic kernel).

A CLIP folder is data, checked like a text-to-video model folder before transformers reads it
(``model_safety``; see ``model_loading``'s docstring): its entries (links, special files), configs without
``auto_map`` / ``custom_pipeline``, ``CLIPModel`` and a CLIP tokenizer instantiated directly (never
``AutoTokenizer``) with ``trust_remote_code=False`` and ``local_files_only=True``, and, with a memory limit,
the size its config describes (built on the ``meta`` device) before any real module is built.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .model_safety import (
    FolderFile,
    ModelTooLarge,
    check_budget,
    check_class,
    config_files,
    module_bytes,
    read_config,
    scan_folder,
    weight_file_bytes,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "TINY_CLIP_NAME",
    "TINY_CLIP_SOURCE",
    "ClipLoadError",
    "ClipModel",
    "ImagePreprocess",
    "clear_clip_cache",
    "clip_source_fingerprint",
    "embed_frames",
    "embed_text",
    "ensure_tiny_clip",
    "load_clip",
]

#: The source id that ``load_clip`` resolves to the tiny CLIP folder.
TINY_CLIP_SOURCE = "builtin:tiny"
#: Folder name; bump the version whenever a config, the tokenizer or the seed changes.
TINY_CLIP_NAME = "tiny-clip-v1"

# Any seed makes a valid tiny CLIP; this one gives non-zero CLIP scores for the shipped edit_video demo
# (with others, random image-text cosines are often all negative and the floored score is 0).
_SEED = 20240618
_MAX_LENGTH = 77
# OpenAI CLIP's normalisation constants (what every released CLIP checkpoint uses).
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_TINY_IMAGE_SIZE = 32
_TINY_TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "max_position_embeddings": _MAX_LENGTH, "projection_dim": 32}
_TINY_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                "image_size": _TINY_IMAGE_SIZE, "patch_size": 8, "projection_dim": 32}

_cache: dict[tuple[Any, ...], ClipModel] = {}
_cache_lock = threading.Lock()


class ClipLoadError(ValueError):
    """A CLIP source is missing, malformed, pickle-only or an unknown builtin."""


@dataclass(frozen=True)
class ImagePreprocess:
    """How frames become CLIP pixel values: ``preprocessor_config.json``'s resize, crop and normalisation."""

    shortest_edge: int | None
    resize_to: tuple[int, int] | None
    crop: tuple[int, int] | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_config(cls, config: dict[str, Any], image_size: int) -> ImagePreprocess:
        """Read a ``CLIPImageProcessor`` config; missing keys fall back to CLIP's defaults at ``image_size``."""
        size = config.get("size", {"shortest_edge": image_size}) if config.get("do_resize", True) else None
        shortest, resize_to = None, None
        if isinstance(size, int):
            shortest = size
        elif isinstance(size, dict) and "shortest_edge" in size:
            shortest = int(size["shortest_edge"])
        elif isinstance(size, dict) and {"height", "width"} <= set(size):
            resize_to = (int(size["height"]), int(size["width"]))
        crop = None
        if config.get("do_center_crop", True):
            crop_size = config.get("crop_size", image_size)
            crop = (crop_size, crop_size) if isinstance(crop_size, int) else (
                int(crop_size["height"]), int(crop_size["width"]))
        normalize = config.get("do_normalize", True)
        mean = tuple(config.get("image_mean", _CLIP_MEAN)) if normalize else (0.0, 0.0, 0.0)
        std = tuple(config.get("image_std", _CLIP_STD)) if normalize else (1.0, 1.0, 1.0)
        return cls(shortest, resize_to, crop, mean, std)  # type: ignore[arg-type]

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """Turn RGB frames ``[N, 3, H, W]`` in [0, 1] into normalised pixel values for the vision tower."""
        import torch
        import torch.nn.functional as functional

        x = frames.to(torch.float32)
        height, width = int(x.shape[-2]), int(x.shape[-1])
        target = self.resize_to
        if self.shortest_edge is not None:
            short, long = min(height, width), max(height, width)
            new_long = int(self.shortest_edge * long / short)
            target = (self.shortest_edge, new_long) if height <= width else (new_long, self.shortest_edge)
        if target is not None and target != (height, width):
            x = functional.interpolate(x, size=target, mode="bicubic", antialias=True, align_corners=False)
            x = x.clamp(0, 1)
        if self.crop is not None:
            x = _center_crop(x, self.crop)
        mean = torch.tensor(self.mean, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std


def _center_crop(x: torch.Tensor, crop: tuple[int, int]) -> torch.Tensor:
    """Crop the centre ``crop`` = (height, width), zero-padding sides that are too small (as transformers does)."""
    import torch.nn.functional as functional

    ch, cw = crop
    height, width = int(x.shape[-2]), int(x.shape[-1])
    pad_h, pad_w = max(ch - height, 0), max(cw - width, 0)
    if pad_h or pad_w:
        x = functional.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        height, width = height + pad_h, width + pad_w
    top, left = (height - ch) // 2, (width - cw) // 2
    return x[..., top:top + ch, left:left + cw]


@dataclass(eq=False)
class ClipModel:
    """A loaded CLIP: the transformers ``CLIPModel`` (eval mode, no grad), its tokenizer and preprocessing.

    A model handle: it travels on graph wires but is never persisted; the cache reloads it from ``source``.
    Treat ``model`` as read-only, since one loaded source is shared by every run in the process.
    """

    model: Any
    tokenizer: Any
    preprocess: ImagePreprocess
    source: str

    @property
    def device(self) -> torch.device:
        """Where the weights live; inputs are moved there."""
        return next(self.model.parameters()).device

    def __repr__(self) -> str:
        """Name the source and the embedding size, never the weights."""
        return f"ClipModel(source={self.source!r}, embed_dim={self.model.config.projection_dim})"


# ----------------------------------------------------------------------------------------------- tiny CLIP


def tiny_clip_dir() -> Path:
    """Where the tiny CLIP folder lives (it may not exist yet; see ``ensure_tiny_clip``)."""
    from .tiny_models import reelgraph_home

    return reelgraph_home() / "models" / TINY_CLIP_NAME


def _seed_weights(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Redraw every parameter from ``generator`` so the weights never depend on torch's global RNG.

    LayerNorms keep weight 1 and bias 0 and ``logit_scale`` keeps CLIP's init; linear and convolution layers
    get PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)); embeddings and the class token N(0, 0.5). With
    N(0, 0.02) embeddings every image and every text of a random CLIP map to nearly one direction; the
    larger ones spread the embeddings out a little (the scores remain noise).
    """
    import torch

    norms = {id(p) for m in model.modules() if isinstance(m, torch.nn.LayerNorm) for p in m.parameters()}
    with torch.no_grad():
        for module in model.modules():
            weight = getattr(module, "weight", None)
            embedding = isinstance(module, torch.nn.Embedding)
            linear = isinstance(weight, torch.Tensor) and weight.ndim >= 2 and not embedding
            for name, param in module.named_parameters(recurse=False):
                if id(param) in norms or name == "logit_scale":
                    continue
                if linear:
                    values = (torch.rand(param.shape, generator=generator) * 2 - 1) * weight[0].numel() ** -0.5
                else:
                    values = torch.randn(param.shape, generator=generator) * 0.5
                param.copy_(values.to(param.dtype))


def _write_tiny_clip(folder: Path) -> None:
    """Build the tiny CLIP from fixed configs and seed, and save it (weights, tokenizer, processor config)."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    from .model_loading import quiet_hf_libraries
    from .tiny_models import build_tiny_tokenizer_files

    quiet_hf_libraries()
    vocab, merges = build_tiny_tokenizer_files()
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=_MAX_LENGTH)
    text = {**_TINY_TEXT, "vocab_size": len(vocab), "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": eos}
    config = CLIPConfig(text_config=text, vision_config=dict(_TINY_VISION), projection_dim=32)
    model = CLIPModel(config)
    _seed_weights(model, torch.Generator("cpu").manual_seed(_SEED))

    folder.mkdir(parents=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    (folder / "merges.txt").write_text(merges_text, encoding="utf-8")
    processor = {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True, "size": {"shortest_edge": _TINY_IMAGE_SIZE}, "resample": 3,
        "do_center_crop": True, "crop_size": {"height": _TINY_IMAGE_SIZE, "width": _TINY_IMAGE_SIZE},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": list(_CLIP_MEAN), "image_std": list(_CLIP_STD), "do_convert_rgb": True,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n", encoding="utf-8")


def ensure_tiny_clip() -> Path:
    """Return the tiny CLIP folder, building it first if missing (atomically; see ``tiny_models.build_once``)."""
    from .tiny_models import build_once

    target = tiny_clip_dir()
    return build_once(target, target / "config.json", _write_tiny_clip)


# ----------------------------------------------------------------------------------------------- loading


_TOKENIZERS = ("CLIPTokenizer", "CLIPTokenizerFast")


def _resolve_folder(source: str) -> Path:
    """Map a source id to a CLIP folder; refuse files and unknown builtins."""
    if source.startswith("builtin:"):
        if source != TINY_CLIP_SOURCE:
            raise ClipLoadError(f"unknown builtin CLIP {source!r}; the only builtin is {TINY_CLIP_SOURCE!r}")
        return ensure_tiny_clip().resolve()
    path = Path(source).expanduser()
    if path.is_file():
        raise ClipLoadError(f"{source!r} is a file; give a CLIPModel folder (config.json, model.safetensors, "
                            "tokenizer and preprocessor files)")
    if not path.is_dir():
        raise ClipLoadError(f"CLIP folder {source!r} does not exist")
    return path.resolve()


def _check_folder(folder: Path) -> tuple[list[FolderFile], str]:
    """Check a CLIP folder before transformers reads it: its entries, its configs (no remote code, the
    ``CLIPModel`` architecture, a CLIP tokenizer) and its safetensors weights. Returns its files and the
    tokenizer class to instantiate."""
    files = scan_folder(folder, ClipLoadError)
    if not (folder / "config.json").is_file():
        raise ClipLoadError(f"{str(folder)!r} is not a transformers model folder: config.json is missing")
    configs = {relative: read_config(folder / relative, folder, ClipLoadError) for relative in config_files(files)}
    where = f"CLIP folder {str(folder)!r}: config.json"
    model = configs["config.json"]
    for name in model.get("architectures") or ["CLIPModel"]:
        check_class(where, "architectures", name, ("CLIPModel",), ClipLoadError)
    check_class(where, "model_type", model.get("model_type", "clip"), ("clip",), ClipLoadError)
    tokenizer = configs.get("tokenizer_config.json", {})
    tokenizer_class = check_class(f"CLIP folder {str(folder)!r}: tokenizer_config.json", "tokenizer_class",
                                  tokenizer.get("tokenizer_class", "CLIPTokenizer"), _TOKENIZERS, ClipLoadError)
    if not any(f.relative.endswith(".safetensors") and "/" not in f.relative for f in files):
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        hint = ""
        if pickles:
            hint = (f" It has only pickle weights ({', '.join(pickles)}); convert them once with "
                    "safetensors.torch.save_file(torch.load(path, weights_only=True), 'model.safetensors').")
        raise ClipLoadError(f"{str(folder)!r} has no *.safetensors weights.{hint}")
    return files, tokenizer_class


def _files_fingerprint(folder: Path) -> tuple[tuple[str, int, int], ...]:
    return tuple((f.relative, f.size, f.mtime_ns) for f in scan_folder(folder, ClipLoadError))


def clip_source_fingerprint(source: str) -> list[Any]:
    """What identifies a CLIP source's content: the builtin's version, or every file's size and mtime."""
    if source.startswith("builtin:"):
        return [source, TINY_CLIP_NAME]
    path = Path(source).expanduser()
    if not path.is_dir():
        return [source, None]
    try:
        return [str(path.resolve()), [list(e) for e in _files_fingerprint(path.resolve())]]
    except ClipLoadError:  # load_clip says why
        return [str(path.resolve()), None]


def _check_size(folder: Path, files: list[FolderFile], limit: int | None) -> None:
    """Refuse (``ModelTooLarge``) a CLIP whose config (built on the meta device, float32) or weight file
    exceeds ``limit``, before any real module is built."""
    if limit is None:
        return
    import torch
    import transformers

    def estimate(remaining: int | None) -> tuple[int, bool]:
        config = transformers.CLIPConfig.from_pretrained(folder, local_files_only=True)
        nbytes, complete = module_bytes(lambda: transformers.CLIPModel(config), torch.float32, remaining)
        on_disk = weight_file_bytes(files, "", ("model.safetensors",))
        return max(nbytes, on_disk), complete or on_disk > nbytes

    try:
        check_budget([("weights", estimate)], limit, f"the CLIP model {str(folder)!r}")
    except ModelTooLarge:
        raise
    except Exception as exc:
        raise ClipLoadError(f"the config of {folder} does not describe a CLIP model that can be built: "
                            f"{type(exc).__name__}: {exc}") from exc


def _load_folder(folder: Path, source: str, device: str, tokenizer_class: str) -> ClipModel:
    """Load a checked CLIP folder: ``CLIPModel`` and the (allowed) tokenizer class, instantiated directly."""
    import transformers

    from .model_loading import quiet_hf_libraries

    quiet_hf_libraries()
    try:
        model = transformers.CLIPModel.from_pretrained(folder, use_safetensors=True, local_files_only=True,
                                                       trust_remote_code=False)
        tokenizer = getattr(transformers, tokenizer_class).from_pretrained(folder, local_files_only=True,
                                                                           trust_remote_code=False)
    except Exception as exc:
        raise ClipLoadError(f"could not load CLIP from {folder}: {type(exc).__name__}: {exc}") from exc
    max_positions = int(model.config.text_config.max_position_embeddings)
    if not tokenizer.model_max_length or tokenizer.model_max_length > max_positions:
        tokenizer.model_max_length = max_positions  # a vocab/merges-only folder loads with a huge sentinel
    config_path = folder / "preprocessor_config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    except (OSError, ValueError) as exc:
        raise ClipLoadError(f"{config_path} is not valid JSON: {exc}") from exc
    preprocess = ImagePreprocess.from_config(config, int(model.config.vision_config.image_size))
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    return ClipModel(model=model, tokenizer=tokenizer, preprocess=preprocess, source=source)


def load_clip(source: str, device: str = "auto", max_bytes: int | None = None) -> ClipModel:
    """Load ``source`` (a CLIPModel folder or ``builtin:tiny``) once per process and device.

    An unchanged source returns the very same handle; a folder whose files change is loaded again.
    Raises ``ClipLoadError`` for missing, malformed, unsafe (see the module docstring) or pickle-only folders
    and unknown builtins, and ``ModelTooLarge`` when its config describes more than ``max_bytes`` (the run's
    memory limit; None: no limit).
    """
    from .model_loading import resolve_device

    if not isinstance(source, str) or not source:
        raise ClipLoadError(f"CLIP source must be a non-empty string, got {source!r}")
    folder = _resolve_folder(source)
    files, tokenizer_class = _check_folder(folder)
    resolved = resolve_device(device)
    key = (source, str(folder), resolved, tuple((f.relative, f.size, f.mtime_ns) for f in files))
    with _cache_lock:
        cached = _cache.get(key)
        if cached is None:
            _check_size(folder, files, max_bytes)
            cached = _load_folder(folder, source, resolved, tokenizer_class)
            for old in [k for k in _cache if k[:3] == key[:3]]:
                del _cache[old]
            _cache[key] = cached
        return cached


def clear_clip_cache() -> None:
    """Forget every loaded CLIP (tests, memory)."""
    with _cache_lock:
        _cache.clear()


# ----------------------------------------------------------------------------------------------- embeddings


def _features(output: Any) -> torch.Tensor:
    """``get_*_features`` returns a tensor in transformers 4 and a ``BaseModelOutputWithPooling`` whose
    ``pooler_output`` is the projected embedding in transformers 5."""
    import torch

    return output if isinstance(output, torch.Tensor) else output.pooler_output


def embed_frames(clip: ClipModel, frames: torch.Tensor, batch: int = 16,
                 progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Projected CLIP image embeddings ``[F, D]`` (not normalised) of frames ``[F, 3, H, W]`` in [0, 1],
    ``batch`` frames per forward pass; ``progress(done, total)`` after each batch."""
    import torch

    total = int(frames.shape[0])
    out = []
    with torch.inference_mode():
        for start in range(0, total, batch):
            pixels = clip.preprocess(frames[start:start + batch].to(clip.device))
            out.append(_features(clip.model.get_image_features(pixel_values=pixels)).float().cpu())
            if progress is not None:
                progress(min(start + batch, total), total)
    return torch.cat(out)


def embed_text(clip: ClipModel, prompt: str) -> torch.Tensor:
    """The projected CLIP text embedding ``[D]`` (not normalised) of ``prompt``, truncated to the model's
    maximum length (77 tokens for released CLIPs)."""
    import torch

    tokens = clip.tokenizer([prompt], padding="max_length", truncation=True,
                            max_length=clip.tokenizer.model_max_length, return_tensors="pt")
    with torch.inference_mode():
        output = clip.model.get_text_features(input_ids=tokens["input_ids"].to(clip.device),
                                              attention_mask=tokens["attention_mask"].to(clip.device))
    return _features(output).float().cpu()[0]
