"""The builtin text-to-video models: ``builtin:tiny`` (trained, shipped) and ``builtin:tiny-random``.

``builtin:tiny`` is the default model: a tiny model trained on the coloured-shapes world
(``shapes_dataset``, ``tools/train_tiny.py``, ``docs/default_model.md``), shipped as fp16 safetensors in
``nodes/models/tiny-shapes-v1`` with a ``SHA256SUMS`` that is checked once per process before it loads.

``builtin:tiny-random`` has the same configs with random weights; the rest of this docstring is about it.

Tests, examples and CI need a real ``UNet3DConditionModel`` + ``AutoencoderKL`` + CLIP text model without
reaching a model hub. This module builds one from fixed configs and a fixed seed and writes it once, in the
diffusers ModelScope (``TextToVideoSDPipeline``) folder layout with safetensors weights, to
``$REELGRAPH_HOME/models/tiny-v1`` (default ``$XDG_CACHE_HOME/reelgraph`` or ``~/.cache/reelgraph``).

Sizes: the VAE downscales by 4 (three encoder blocks, ``block_out_channels=(8, 16, 16)``) into 4 latent
channels; the UNet has ``(16, 32)`` channels (about 0.34 M parameters); the text model is a 2-layer CLIP
with 32 hidden units over a byte-level BPE vocabulary learnt from a small fixed corpus. Its outputs are
noise: it exists to exercise code paths, not to make pictures.

The folder is written into a temporary sibling directory and renamed into place, so a crash or a
concurrent writer never leaves a half-written ``tiny-v1``.

Two companions line up with that UNet3D. The trained ones ship in the package like ``builtin:tiny`` (fp16
safetensors, ``SHA256SUMS`` checked once per process before they are used; ``tools/train_companions.py``,
docs/default_model.md):

* ``builtin:tiny`` for ``load_controlnet``: a 2D ``ControlNetModel`` (``nodes/models/tiny-controlnet-shapes-v1``)
  trained on the Canny edges of the shapes world, so the trained model's shape follows a control clip's path
  even when the prompt names another direction.
* ``builtin:tiny-lora`` for ``load_lora``: a rank-4 kohya-format LoRA (``nodes/models/tiny-lora-bar-v1``) that
  teaches the trained model a shape it has never seen, the horizontal ``bar`` (``a red bar moving left``).

Their random versions are built like ``tiny-v1``, each from its own seed (building them never touches
``tiny-v1``), for tests that rely on their determinism:

* ``builtin:tiny-random`` for ``load_controlnet`` (``ensure_tiny_controlnet_random``): a ``ControlNetModel``
  (``tiny-controlnet-v1``) whose residuals match the UNet3D's blocks and whose conditioning embedding
  downscales by the VAE's 4. Its output convolutions are random, not zero, so it visibly steers the tiny model.
* ``builtin:tiny-lora-random`` for ``load_lora`` (``ensure_tiny_lora_random``): a rank-4 kohya-format LoRA
  file (``tiny-lora-v1.safetensors``) on the UNet3D's spatial, temporal and ``transformer_in`` attention
  projections and the text encoder's.

``builtin_controlnet`` / ``builtin_lora`` map every builtin name to its path, ``builtin_controlnet_version`` /
``builtin_lora_version`` to a content id for cache keys.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "TINY_CONTROLNET_NAME",
    "TINY_CONTROLNET_RANDOM_NAME",
    "TINY_CONTROLNET_RANDOM_SOURCE",
    "TINY_CONTROLNET_SOURCE",
    "TINY_LORA_NAME",
    "TINY_LORA_RANDOM_NAME",
    "TINY_LORA_RANDOM_SOURCE",
    "TINY_LORA_SOURCE",
    "TINY_NAME",
    "TINY_RANDOM_SOURCE",
    "TINY_SOURCE",
    "TRAINED_NAME",
    "WeightsMismatch",
    "build_tiny_tokenizer_files",
    "builtin_controlnet",
    "builtin_controlnet_version",
    "builtin_lora",
    "builtin_lora_version",
    "builtin_model",
    "builtin_model_version",
    "controlnet_builtins",
    "ensure_tiny_controlnet",
    "ensure_tiny_controlnet_random",
    "ensure_tiny_lora",
    "ensure_tiny_lora_random",
    "ensure_tiny_model",
    "reelgraph_home",
    "tiny_model_dir",
    "trained_model_dir",
    "verify_sha256sums",
]

#: The source id of the default model: ``load_model``'s default (see ``builtin_model``).
TINY_SOURCE = "builtin:tiny"
#: The source id of the deterministic random model (fast tests; its output is noise).
TINY_RANDOM_SOURCE = "builtin:tiny-random"
#: Folder name; bump the version whenever a config, the corpus or the seed changes.
TINY_NAME = "tiny-v1"
#: Folder (under ``nodes/models``) of the shipped trained model; see docs/default_model.md.
TRAINED_NAME = "tiny-shapes-v1"

_SEED = 20240607

#: The source id ``load_controlnet`` resolves to the trained tiny ControlNet (shipped).
TINY_CONTROLNET_SOURCE = "builtin:tiny"
#: Folder (under ``nodes/models``) of the trained tiny ControlNet; see docs/default_model.md.
TINY_CONTROLNET_NAME = "tiny-controlnet-shapes-v1"
#: The source id of the random tiny ControlNet (built locally; tests).
TINY_CONTROLNET_RANDOM_SOURCE = "builtin:tiny-random"
#: Folder name of the random tiny ControlNet; bump the version whenever its config or seed changes.
TINY_CONTROLNET_RANDOM_NAME = "tiny-controlnet-v1"
#: The source id ``load_lora`` resolves to the trained tiny LoRA (shipped; the ``bar`` concept).
TINY_LORA_SOURCE = "builtin:tiny-lora"
#: Folder (under ``nodes/models``) of the trained tiny LoRA, and the stem of its ``.safetensors`` file in it.
TINY_LORA_NAME = "tiny-lora-bar-v1"
#: The source id of the random tiny LoRA (written locally; tests).
TINY_LORA_RANDOM_SOURCE = "builtin:tiny-lora-random"
#: File stem of the random tiny LoRA; bump the version whenever its targets, rank, alpha or seed change.
TINY_LORA_RANDOM_NAME = "tiny-lora-v1"
_CONTROLNET_SEED = 20240711
_LORA_SEED = 20240712
_LORA_RANK = 4
_LORA_ALPHA = 2.0
_build_lock = threading.Lock()
_MAX_LENGTH = 77
_NUM_MERGES = 240
_BOS = "<|startoftext|>"
_EOS = "<|endoftext|>"

# A fixed corpus: the BPE merges are learnt from it, so the vocabulary is deterministic and small.
_CORPUS = """
a video of a red ball bouncing on a green field under a blue sky
a cat walking across the room slowly while the camera pans to the left
an astronaut riding a horse on the moon, cinematic lighting, high quality
waves crashing on the beach at sunset, slow motion, drone shot
a yellow square moving from left to right over a black background
a white circle moving up and down, smooth motion, simple shapes
the quick brown fox jumps over the lazy dog in a forest at night
time lapse of clouds passing over mountains and a river in spring
a person dancing in the rain in the city street with neon lights
low quality, blurry, distorted, watermark, text, ugly, bad anatomy
"""

# UNet3D: channels must divide by ``attention_head_dim`` (really the number of heads) and by the groups.
_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock3D", "DownBlock3D"],
    "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D"],
    "block_out_channels": [16, 32],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "cross_attention_dim": 32,
    "attention_head_dim": 4,
}

# ControlNet lined up with _UNET_CONFIG: same block channels, layers, heads and cross-attention width, so
# its down/mid residuals have the UNet3D's shapes; three embedding blocks downscale control images by 4,
# the tiny VAE's factor.
_CONTROLNET_CONFIG: dict[str, Any] = {
    "in_channels": 4,
    "conditioning_channels": 3,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "block_out_channels": [16, 32],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "cross_attention_dim": 32,
    "attention_head_dim": 4,
    "conditioning_embedding_out_channels": [8, 16, 16],
}

_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [8, 16, 16],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 4,
    "sample_size": 32,
    "scaling_factor": 0.18215,
}

# The ModelScope text-to-video scheduler settings (scaled-linear betas, leading spacing, offset 1).
_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}

_TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": _MAX_LENGTH,
    "projection_dim": 32,
}


def reelgraph_home() -> Path:
    """Root of reelgraph's per-user cache: ``$REELGRAPH_HOME``, else ``$XDG_CACHE_HOME/reelgraph``, else
    ``~/.cache/reelgraph``. Kept free of ``platformdirs`` to avoid a dependency for one path."""
    env = os.environ.get("REELGRAPH_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path(os.path.expanduser("~")) / ".cache"
    return base / "reelgraph"


def tiny_model_dir() -> Path:
    """Where the tiny model folder lives (it may not exist yet; see ``ensure_tiny_model``)."""
    return reelgraph_home() / "models" / TINY_NAME


def _bytes_to_unicode() -> dict[int, str]:
    """The byte-level BPE alphabet: printable Latin-1 bytes map to themselves, the other bytes to code
    points from 256 upwards, so every byte has a visible, non-whitespace character."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    mapping: dict[int, str] = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def build_tiny_tokenizer_files() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Learn a small CLIP-style BPE (vocab dict, ordered merges) from the fixed corpus, deterministically.

    Layout follows CLIP's: the 256 byte symbols, the same with the ``</w>`` end-of-word suffix, one entry
    per merge in merge order, then ``<|startoftext|>`` and ``<|endoftext|>``. Ties between equally frequent
    pairs are broken lexicographically, so the result never depends on hash order.
    """
    alphabet = list(_bytes_to_unicode().values())
    words: Counter[tuple[str, ...]] = Counter()
    for word in _CORPUS.lower().replace(",", " ").split():
        symbols = [*word[:-1], word[-1] + "</w>"]
        words[tuple(symbols)] += 1
    merges: list[tuple[str, str]] = []
    for _ in range(_NUM_MERGES):
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, count in words.items():
            for pair in itertools.pairwise(symbols):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs.items(), key=lambda item: (-item[1], item[0]))[0]
        merges.append(best)
        merged: Counter[tuple[str, ...]] = Counter()
        for symbols, count in words.items():
            out: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    tokens = alphabet + [s + "</w>" for s in alphabet] + ["".join(m) for m in merges] + [_BOS, _EOS]
    vocab: dict[str, int] = {}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    return vocab, merges


def _seeded_init(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Re-draw every random parameter from ``generator``, so the weights never depend on torch's global RNG
    (which other threads may be using). Normalisation layers keep their constant init; embeddings get
    N(0, 0.02); other weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's default bound. Layers
    that diffusers zero-initialises (the temporal convolutions' last layer) become random too, so the tiny
    model exercises every path."""
    import torch

    norms = (torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.BatchNorm2d)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, norms):
                continue
            weight = getattr(module, "weight", None)
            fan_in = weight[0].numel() if isinstance(weight, torch.Tensor) and weight.ndim >= 2 else None
            for name, param in module.named_parameters(recurse=False):
                if isinstance(module, torch.nn.Embedding):
                    values = torch.randn(param.shape, generator=generator) * 0.02
                elif fan_in is not None:
                    bound = fan_in**-0.5
                    values = (torch.rand(param.shape, generator=generator) * 2 - 1) * bound
                elif name == "weight" or param.ndim >= 2:
                    values = torch.randn(param.shape, generator=generator) * 0.02
                else:
                    continue
                param.copy_(values.to(param.dtype))


def _write_tiny_model(folder: Path) -> None:
    """Build every component from fixed configs, seed its weights and save it under ``folder`` (which
    must not exist)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from .model_loading import quiet_hf_libraries

    quiet_hf_libraries()
    vocab, merges = build_tiny_tokenizer_files()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=_MAX_LENGTH)
    text_config = CLIPTextConfig(
        vocab_size=len(vocab),
        bos_token_id=vocab[_BOS],
        eos_token_id=vocab[_EOS],
        pad_token_id=vocab[_EOS],
        **_TEXT_CONFIG,
    )
    generator = torch.Generator("cpu").manual_seed(_SEED)
    unet = UNet3DConditionModel(**_UNET_CONFIG)
    vae = AutoencoderKL(**_VAE_CONFIG)
    text_encoder = CLIPTextModel(text_config)
    for model in (unet, vae, text_encoder):
        _seeded_init(model, generator)
    scheduler = DDIMScheduler(**_SCHEDULER_CONFIG)

    folder.mkdir(parents=True)
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    scheduler.save_pretrained(folder / "scheduler")
    tok_dir = folder / "tokenizer"
    tokenizer.save_pretrained(tok_dir)
    # save_pretrained only writes tokenizer.json; also write the slow-format files so the folder loads
    # from either representation.
    (tok_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    (tok_dir / "merges.txt").write_text(merges_text, encoding="utf-8")

    import diffusers

    index = {
        "_class_name": "TextToVideoSDPipeline",
        "_diffusers_version": diffusers.__version__,
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet3DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def build_once(target: Path, complete: Path, write: Callable[[Path], None]) -> Path:
    """Return ``target``, first building it with ``write(tmp)`` into a unique temporary sibling and renaming
    it into place when ``complete`` (a file inside it, or ``target`` itself) is missing. If another process
    wins the race, its complete result is kept and ours is discarded, so readers never see a partial one."""
    if complete.is_file():
        return target
    with _build_lock:  # threads of this process build once; other processes race on the rename
        if complete.is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            write(tmp)
            try:
                os.rename(tmp, target)
            except OSError as exc:
                # Another process renamed a complete result into place first: keep theirs.
                if not complete.is_file():
                    raise OSError(f"cannot move {target.name} into {target}: it exists but is not complete; "
                                  "delete it and retry") from exc
        finally:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            elif tmp.exists():
                tmp.unlink()
    return target


def ensure_tiny_model() -> Path:
    """Return the tiny model folder, building it first if it is missing.

    The folder is built in a uniquely named temporary sibling and renamed into place. If another process
    wins the race, its complete folder is kept and ours is discarded, so readers only ever see a complete
    folder.
    """
    target = tiny_model_dir()
    return build_once(target, target / "model_index.json", _write_tiny_model)


class WeightsMismatch(ValueError):
    """A shipped model's files do not match the SHA256SUMS written when it was exported."""


def verify_sha256sums(folder: Path) -> str:
    """Check every file listed in ``folder/SHA256SUMS`` (and that none is missing); return the digest of the
    SHA256SUMS file itself, which identifies the whole model. Raises ``WeightsMismatch`` naming the files."""
    import hashlib

    sums = folder / "SHA256SUMS"
    try:
        listing = sums.read_bytes()
    except OSError as exc:
        raise WeightsMismatch(f"{folder} has no readable SHA256SUMS ({exc.strerror})") from None
    bad = []
    for line in listing.decode("utf-8").splitlines():
        digest, _, name = line.partition("  ")
        path = folder / name
        try:
            actual = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            actual = "missing"
        if actual != digest:
            found = "missing" if actual == "missing" else f"sha256 {actual[:12]}…, expected {digest[:12]}…"
            bad.append(f"{name} ({found})")
    if bad:
        raise WeightsMismatch(f"the shipped model in {folder} does not match its SHA256SUMS: {', '.join(bad)}; "
                              "reinstall reelgraph (or `git checkout` the folder) to restore it")
    return hashlib.sha256(listing).hexdigest()


def trained_model_dir() -> Path:
    """The folder of the shipped trained model (``builtin:tiny``), inside the installed package."""
    return Path(__file__).resolve().parent / "models" / TRAINED_NAME


def shipped_dir(name: str) -> Path:
    """The folder of a shipped model or companion ``nodes/models/<name>``, inside the installed package."""
    return Path(__file__).resolve().parent / "models" / name


_verified: dict[tuple[str, int], str] = {}


def _verified_trained_model() -> tuple[Path, str]:
    """The trained model's folder and digest, its SHA256SUMS checked once per process (again if it changes)."""
    folder = trained_model_dir()
    sums = folder / "SHA256SUMS"
    key = (str(folder), sums.stat().st_mtime_ns if sums.exists() else -1)
    with _build_lock:
        if key not in _verified:
            _verified[key] = verify_sha256sums(folder)
        return folder, _verified[key]


def builtin_model_version(source: str) -> str:
    """A short id of the content behind a ``builtin:`` text-to-video source (cache keys change with it).
    Raises ``KeyError`` for an unknown builtin and ``WeightsMismatch`` for altered shipped weights."""
    if source == TINY_SOURCE:
        return f"{TRAINED_NAME}:{_verified_trained_model()[1][:16]}"
    if source == TINY_RANDOM_SOURCE:
        return TINY_NAME
    raise KeyError(source)


def builtin_model(source: str) -> Path:
    """The folder of a ``builtin:`` text-to-video source: the shipped trained model (its sha256 checked) or
    the random one (built first if needed). Raises ``KeyError`` for an unknown builtin and
    ``WeightsMismatch`` for altered shipped weights."""
    if source == TINY_SOURCE:
        return _verified_trained_model()[0]
    if source == TINY_RANDOM_SOURCE:
        return ensure_tiny_model()
    raise KeyError(source)


def _verified_shipped(name: str) -> tuple[Path, str]:
    """A shipped companion's folder and digest, its SHA256SUMS checked once per process (again if it changes)."""
    folder = shipped_dir(name)
    sums = folder / "SHA256SUMS"
    key = (str(folder), sums.stat().st_mtime_ns if sums.exists() else -1)
    with _build_lock:
        if key not in _verified:
            _verified[key] = verify_sha256sums(folder)
        return folder, _verified[key]


def _write_tiny_controlnet(folder: Path) -> None:
    """Build the random tiny ControlNet from its config and seed and save it under ``folder`` (diffusers
    layout)."""
    import torch
    from diffusers import ControlNetModel

    from .model_loading import quiet_hf_libraries

    quiet_hf_libraries()
    model = ControlNetModel(**_CONTROLNET_CONFIG)
    _seeded_init(model, torch.Generator("cpu").manual_seed(_CONTROLNET_SEED))
    model.save_pretrained(folder, safe_serialization=True)


def ensure_tiny_controlnet() -> Path:
    """The folder of the trained tiny ControlNet (``builtin:tiny`` for ``load_controlnet``), shipped in the
    package; its SHA256SUMS is checked first (``WeightsMismatch`` names altered files)."""
    return _verified_shipped(TINY_CONTROLNET_NAME)[0]


def ensure_tiny_controlnet_random() -> Path:
    """Return the folder of the random tiny ControlNet (``builtin:tiny-random`` for ``load_controlnet``),
    building it first if it is missing; written atomically like the tiny model."""
    target = reelgraph_home() / "models" / TINY_CONTROLNET_RANDOM_NAME
    return build_once(target, target / "config.json", _write_tiny_controlnet)


def _shipped_version(name: str) -> str:
    """The content id of a shipped companion: its name and the start of its SHA256SUMS digest."""
    return f"{name}:{_verified_shipped(name)[1][:16]}"


def controlnet_builtins() -> dict[str, tuple[Callable[[], Path], Callable[[], str]]]:
    """The ``builtin:`` ControlNets for ``builtin:tiny``: source -> (its folder, its content id for cache keys)."""
    return {TINY_CONTROLNET_SOURCE: (ensure_tiny_controlnet, lambda: _shipped_version(TINY_CONTROLNET_NAME)),
            TINY_CONTROLNET_RANDOM_SOURCE: (ensure_tiny_controlnet_random, lambda: TINY_CONTROLNET_RANDOM_NAME)}


def builtin_controlnet(source: str) -> Path:
    """The folder of a ``builtin:`` ControlNet source. Raises ``KeyError`` for an unknown builtin and
    ``WeightsMismatch`` for altered shipped weights."""
    return controlnet_builtins()[source][0]()


def builtin_controlnet_version(source: str) -> str:
    """A short id of the content behind a ``builtin:`` ControlNet source (cache keys change with it)."""
    return controlnet_builtins()[source][1]()


def _lora_targets() -> dict[str, tuple[str, tuple[int, int]]]:
    """Kohya module key -> (module name, (out, in)) for every attention projection the tiny LoRA adapts."""
    from diffusers import UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = UNet3DConditionModel(**_UNET_CONFIG)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=300, bos_token_id=0, eos_token_id=1, pad_token_id=1, **_TEXT_CONFIG))
    projections = ("to_q", "to_k", "to_v", "to_out.0", "q_proj", "k_proj", "v_proj", "out_proj")
    targets: dict[str, tuple[str, tuple[int, int]]] = {}
    for prefix, model in (("lora_unet_", unet), ("lora_te_text_model_", text)):
        for name, module in model.named_modules():
            if name.endswith(projections) and hasattr(module, "in_features"):
                shape = (int(module.out_features), int(module.in_features))
                targets[prefix + name.replace(".", "_")] = (name, shape)
    return targets


def _write_tiny_lora(path: Path) -> None:
    """Draw the random tiny LoRA's down/up matrices from its seed and save them, kohya style, to ``path``."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator("cpu").manual_seed(_LORA_SEED)
    tensors: dict[str, torch.Tensor] = {}
    for key, (_, (out_features, in_features)) in sorted(_lora_targets().items()):
        down = torch.randn(_LORA_RANK, in_features, generator=generator) * in_features**-0.5
        up = torch.randn(out_features, _LORA_RANK, generator=generator) * 0.5
        tensors[f"{key}.lora_down.weight"] = down
        tensors[f"{key}.lora_up.weight"] = up
        tensors[f"{key}.alpha"] = torch.tensor(_LORA_ALPHA)
    save_file(tensors, str(path), metadata={"format": "pt", "reelgraph": TINY_LORA_RANDOM_NAME})


def ensure_tiny_lora() -> Path:
    """The file of the trained tiny LoRA (``builtin:tiny-lora`` for ``load_lora``: the ``bar`` concept),
    shipped in the package; its folder's SHA256SUMS is checked first (``WeightsMismatch`` names altered files)."""
    return _verified_shipped(TINY_LORA_NAME)[0] / f"{TINY_LORA_NAME}.safetensors"


def ensure_tiny_lora_random() -> Path:
    """Return the random tiny LoRA file (``builtin:tiny-lora-random`` for ``load_lora``), writing it first if
    it is missing.

    Deterministic: the same seed gives the same file on every machine, so workflows and tests that use it
    are reproducible without shipping a binary.
    """
    target = reelgraph_home() / "models" / f"{TINY_LORA_RANDOM_NAME}.safetensors"
    return build_once(target, target, _write_tiny_lora)


def _lora_builtins() -> dict[str, tuple[Callable[[], Path], Callable[[], str]]]:
    """The ``builtin:`` LoRAs: source -> (its file, its content id for cache keys)."""
    return {TINY_LORA_SOURCE: (ensure_tiny_lora, lambda: _shipped_version(TINY_LORA_NAME)),
            TINY_LORA_RANDOM_SOURCE: (ensure_tiny_lora_random, lambda: TINY_LORA_RANDOM_NAME)}


def builtin_lora(source: str) -> Path:
    """The file of a ``builtin:`` LoRA source. Raises ``KeyError`` for an unknown builtin and
    ``WeightsMismatch`` for altered shipped weights."""
    return _lora_builtins()[source][0]()


def builtin_lora_version(source: str) -> str:
    """A short id of the content behind a ``builtin:`` LoRA source (cache keys change with it)."""
    return _lora_builtins()[source][1]()
