"""The Stable Diffusion 1.5 configs and CLIP tokenizer shipped with reelgraph, so a single checkpoint loads offline.

``sd15/`` (package data) is a diffusers folder without weights: ``model_index.json`` (``StableDiffusionPipeline``),
``unet/``, ``vae/`` and ``text_encoder/`` configs as the SD 1.5 repositories hold them (runwayml/stable-diffusion-v1-5
in diffusers' layout: a 320-1280 channel UNet2DConditionModel with 8 heads, the 4-block AutoencoderKL with scaling
0.18215, CLIP ViT-L/14's 12-layer text model), and ``scheduler/`` with AnimateDiff's inference schedule (DDIM,
linear betas 0.00085-0.012, linspace spacing, offset 1: the one its motion modules were trained and are documented
with, where SD 1.5's own folder has PNDM with scaled-linear betas). ``load_model``'s ``config`` input replaces the
folder.

The tokenizer is CLIP's: its BPE merges ship as ``sd15/tokenizer/bpe_simple_vocab_16e6.txt.gz`` (from the
``open_clip_torch`` wheel, MIT, OpenAI CLIP; see ``NOTICE.md``), and :func:`clip_tokenizer` derives the vocabulary
from it exactly as CLIP builds it (and as ``vocab.json`` of openai/clip-vit-large-patch14 lists it): the 256 byte
symbols of ``bytes_to_unicode``, the same with ``</w>``, one entry per merge, then ``<|startoftext|>`` and
``<|endoftext|>``: 49408 entries, ids 49406 and 49407 for the two markers.
"""

from __future__ import annotations

import gzip
import hashlib
import threading
from pathlib import Path
from typing import Any

__all__ = ["BPE_SHA256", "SD15_CONFIG_DIR", "clip_bpe", "clip_tokenizer", "clip_vocab"]

#: The shipped diffusers config folder of Stable Diffusion 1.5 (no weights).
SD15_CONFIG_DIR = Path(__file__).resolve().parent / "sd15"
_BPE = SD15_CONFIG_DIR / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz"
#: sha256 of the shipped BPE file (OpenAI CLIP's ``bpe_simple_vocab_16e6.txt.gz``).
BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
#: Merges CLIP uses: the file's lines 1 .. 49152 - 256 - 2 (its first line is a header).
_NUM_MERGES = 49152 - 256 - 2
_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"
_lock = threading.Lock()
_cache: dict[str, Any] = {}


def clip_bpe() -> list[tuple[str, str]]:
    """CLIP's BPE merges, in rank order, from the shipped file (its sha256 checked)."""
    data = _BPE.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != BPE_SHA256:
        raise ValueError(f"{_BPE} has sha256 {digest[:12]}…, not CLIP's {BPE_SHA256[:12]}…; reinstall reelgraph")
    lines = gzip.decompress(data).decode("utf-8").split("\n")[1:_NUM_MERGES + 1]
    return [tuple(line.split()) for line in lines]  # type: ignore[misc]


def clip_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """CLIP's vocabulary from its merges (see the module docstring)."""
    from ..tiny_models import _bytes_to_unicode

    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [s + "</w>" for s in alphabet] + ["".join(m) for m in merges] + [_BOS, _EOS]
    return {token: i for i, token in enumerate(tokens)}


def clip_tokenizer(model_max_length: int = 77) -> Any:
    """A ``CLIPTokenizer`` with CLIP's vocabulary and merges (built once per process, then copied), padding with
    ``<|endoftext|>`` as Stable Diffusion 1.5's tokenizer does."""
    import copy

    from transformers import CLIPTokenizer

    with _lock:
        if "tokenizer" not in _cache:
            merges = clip_bpe()
            _cache["tokenizer"] = CLIPTokenizer(vocab=clip_vocab(merges), merges=merges,
                                                model_max_length=model_max_length, pad_token=_EOS)
        tokenizer = copy.deepcopy(_cache["tokenizer"])
    tokenizer.model_max_length = model_max_length
    return tokenizer
