"""``builtin:tiny-animatediff-controlnet``: a small random Stable Diffusion ``ControlNetModel`` for
``builtin:tiny-animatediff``, for ``load_controlnet`` in tests, smoke runs and
``workflows/animatediff_controlnet.json``.

An AnimateDiff UNet is a Stable Diffusion UNet with motion modules, so the ControlNets its users hold are SD ones,
run per frame. This one is built like ``builtin:tiny``'s ControlNet (``tiny_models``): from the tiny AnimateDiff
UNet's own 2D config (same blocks, channels, heads and cross-attention width, so its residuals fit block by block)
with a control-image embedding that downscales by the tiny VAE's factor 2, every weight drawn from a fixed seed
(the output convolutions too, which diffusers zero-initialises, so it visibly steers the model), and saved once,
atomically, as a diffusers folder under ``$REELGRAPH_HOME/models``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["CONTROLNET_CONFIG", "TINY_ANIMATEDIFF_CONTROLNET_NAME", "TINY_ANIMATEDIFF_CONTROLNET_SOURCE",
           "ensure_tiny_animatediff_controlnet"]

#: The source id ``load_controlnet`` resolves to this ControlNet's folder.
TINY_ANIMATEDIFF_CONTROLNET_SOURCE = "builtin:tiny-animatediff-controlnet"
#: Folder name; bump the version whenever the config or the seed changes.
TINY_ANIMATEDIFF_CONTROLNET_NAME = "tiny-animatediff-controlnet-v1"
_SEED = 20261209

_UNET_KEYS = ("in_channels", "down_block_types", "block_out_channels", "layers_per_block", "norm_num_groups",
              "cross_attention_dim", "attention_head_dim")


def _config() -> dict[str, Any]:
    """The ControlNet config: the tiny AnimateDiff UNet's 2D blocks, RGB control images embedded at 1/2."""
    from .tiny import UNET_CONFIG, VAE_CONFIG

    unet = {key: UNET_CONFIG[key] for key in _UNET_KEYS}
    # One embedding block per VAE downscale, plus the input one: 2 ** (len - 1) is the VAE factor.
    embedding = [16 * 2**i for i in range(len(VAE_CONFIG["block_out_channels"]))]
    return {**unet, "conditioning_channels": 3, "conditioning_embedding_out_channels": embedding}


#: The tiny ControlNet's ``ControlNetModel`` config (see the module docstring).
CONTROLNET_CONFIG: dict[str, Any] = _config()


def _write(folder: Path) -> None:
    """Build the ControlNet from its config and seed and save it under ``folder`` (diffusers layout)."""
    import torch
    from diffusers import ControlNetModel

    from ..model_loading import quiet_hf_libraries
    from ..tiny_models import _seeded_init

    quiet_hf_libraries()
    model = ControlNetModel(**CONTROLNET_CONFIG)
    _seeded_init(model, torch.Generator("cpu").manual_seed(_SEED))
    model.save_pretrained(folder, safe_serialization=True)


def ensure_tiny_animatediff_controlnet() -> Path:
    """Return the folder of ``builtin:tiny-animatediff-controlnet``, building it first if it is missing."""
    from ..tiny_models import build_once, reelgraph_home

    target = reelgraph_home() / "models" / TINY_ANIMATEDIFF_CONTROLNET_NAME
    return build_once(target, target / "config.json", _write)
