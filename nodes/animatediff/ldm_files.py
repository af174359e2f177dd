"""Single-file Stable Diffusion 1.5 checkpoints in the original LDM key layout, as community models are shared.

One ``.safetensors`` (or a pickle, read through ``torch.load(weights_only=True)``) holds the three networks under
LDM's names: ``model.diffusion_model.*`` (the UNet: ``input_blocks``, ``middle_block``, ``output_blocks``, resnet
``in_layers`` / ``out_layers`` / ``emb_layers`` / ``skip_connection``), ``first_stage_model.*`` (the VAE:
``encoder.down.<i>.block.<j>``, ``mid.attn_1`` with 1x1-convolution ``q``/``k``/``v``/``proj_out``) and
``cond_stage_model.transformer.*`` (the CLIP text model under transformers 4's names), besides tensors no
diffusers model keeps (the noise schedule ``betas`` / ``alphas_cumprod``, ``model_ema.*``, ``position_ids``).

The names are translated with diffusers' own converters (``diffusers.loaders.single_file_utils``:
``convert_ldm_unet_checkpoint``, ``convert_ldm_vae_checkpoint``, ``convert_ldm_clip_checkpoint``; offline, they are
plain dictionary code), run once on *placeholders* (name and shape, no data) so that each file key's diffusers
name is known before any tensor is read. The result is a renamer per part and, for the VAE's attention, a fitter
that drops the 1x1 kernel axes; ``model_files`` then checks and loads the file like any weight set, reading each
tensor once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ..weights import TensorInfo

__all__ = ["LDM_PREFIXES", "fit_ldm", "is_ldm_checkpoint", "ldm_renamer"]

#: The key prefix of each part in an LDM checkpoint.
LDM_PREFIXES = {"unet": "model.diffusion_model.", "vae": "first_stage_model.",
                "text_encoder": "cond_stage_model.transformer."}


class _Placeholder:
    """Stands in for a tensor in diffusers' converters: its file key and shape, and indexing (the converters'
    ``w[:, :, 0, 0]`` for the VAE attention) gives the same key with the indexed axes dropped."""

    def __init__(self, key: str, shape: tuple[int, ...]) -> None:
        self.key, self.shape = key, shape

    @property
    def ndim(self) -> int:
        """Number of axes, as a tensor says."""
        return len(self.shape)

    def __getitem__(self, index: Any) -> _Placeholder:
        index = index if isinstance(index, tuple) else (index,)
        shape = [d for i, d in enumerate(self.shape) if i >= len(index) or not isinstance(index[i], int)]
        return _Placeholder(self.key, tuple(shape))


def is_ldm_checkpoint(keys: Iterable[str]) -> bool:
    """Whether a file's keys are a Stable Diffusion checkpoint in LDM's layout (a ``model.diffusion_model.`` UNet)."""
    return any(k.startswith(LDM_PREFIXES["unet"]) for k in keys)


def ldm_renamer(component: str, infos: dict[str, TensorInfo], config: dict[str, Any]) -> Callable[[str], str | None]:
    """``rename(file_key) -> diffusers key`` (None for the keys that are not this part's) for one part of an LDM
    checkpoint whose tensors are ``infos``; ``config`` is the part's diffusers config (the UNet's and VAE's block
    layout decides the names). Raises what diffusers' converter raises on a checkpoint it cannot read."""
    from diffusers.loaders import single_file_utils as sfu

    prefix = LDM_PREFIXES[component]
    placeholders = {k: _Placeholder(k, tuple(info.shape)) for k, info in infos.items() if k.startswith(prefix)}
    if component == "unet":
        converted = sfu.convert_ldm_unet_checkpoint(placeholders, dict(config))
    elif component == "vae":
        converted = sfu.convert_ldm_vae_checkpoint(placeholders, dict(config))
    else:
        converted = sfu.convert_ldm_clip_checkpoint(placeholders)
    mapping = {value.key: key for key, value in converted.items() if isinstance(value, _Placeholder)}
    return mapping.get


def fit_ldm(key: str, tensor: Any, shape: tuple[int, ...]) -> Any:
    """A stored tensor in the shape the model wants when only size-1 axes differ (LDM's VAE attention keeps its
    projections as 1x1 convolutions, ``[C, C, 1, 1]``, where diffusers has linear layers, ``[C, C]``)."""
    squeezed = [d for d in tensor.shape if d != 1]
    if squeezed != [d for d in shape if d != 1]:
        raise ValueError(f"{key}: {list(tensor.shape)} does not fit {list(shape)}")
    return tensor.reshape(shape)
