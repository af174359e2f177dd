"""The one place reelgraph reads weight files: safetensors first, pickle formats only without code.

Every node that reads a state dict from a file (LoRA files, single-file ControlNets, feature extractors)
calls :func:`load_state_dict`. ``.safetensors`` files are read with ``safetensors``; ``.bin`` / ``.pt`` /
``.pth`` / ``.ckpt`` files only through ``torch.load(weights_only=True)``, which refuses any pickle that
would construct objects other than tensors and plain containers (so a planted payload never runs).
Diffusers folders are loaded by ``model_loading`` with ``use_safetensors=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["PICKLE_SUFFIXES", "SAFETENSORS_SUFFIXES", "UnsafeWeightsError", "WeightsError", "load_checkpoint",
           "load_state_dict"]

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


class WeightsError(ValueError):
    """A weight file is missing, unreadable or of an unknown format."""


class UnsafeWeightsError(WeightsError):
    """A pickle weight file holds more than tensors (it would run code when fully unpickled)."""


def load_state_dict(path: str | Path, *, allow_pickle: bool = True) -> dict[str, Tensor]:
    """Read a flat ``{name: tensor}`` state dict from ``path`` on the CPU.

    ``allow_pickle=False`` refuses pickle formats outright (for sources where safetensors is the only
    acceptable format). Nested checkpoints (``{"state_dict": {...}}``) are unwrapped one level.
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"weight file {str(p)!r} does not exist")
    suffix = p.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(p), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"{str(p)!r} is not a readable safetensors file: {exc}") from exc
    if suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise UnsafeWeightsError(f"{str(p)!r} is a pickle file; only .safetensors is accepted here")
        try:
            data = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError for payloads, RuntimeError for corrupt archives
            raise UnsafeWeightsError(
                f"{str(p)!r} was refused: torch.load(weights_only=True) would not load it ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}). Convert it to .safetensors from a trusted copy."
            ) from exc
        if isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
            data = data["state_dict"]
        if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
            raise WeightsError(f"{str(p)!r} does not hold a flat dict of tensors")
        return data
    raise WeightsError(f"{str(p)!r}: unknown weight format {suffix or '(no extension)'}; use .safetensors")


def load_checkpoint(path: str | Path) -> Any:
    """Read a training checkpoint (nested dicts/lists of tensors and plain values, e.g. optimiser state).

    Only through ``torch.load(weights_only=True)``: a checkpoint that would construct other objects is
    refused with :class:`UnsafeWeightsError` instead of running code.
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"checkpoint {str(p)!r} does not exist")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UnsafeWeightsError(f"{str(p)!r} was refused by torch.load(weights_only=True): {exc}") from exc
