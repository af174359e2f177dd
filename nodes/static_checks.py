"""Static checks: mistakes ``reelgraph validate`` can see without running a node or loading a model.

Each function is a node type's ``check`` (see ``reelgraph.node``): it gets the node's literal and parameter
values (paths already resolved and sandboxed) and yields ``NodeInputError``s. Sizes are checked against the
VAE factor read from the linked model's ``vae/config.json`` (a few bytes of JSON; no weights are read).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from reelgraph import CheckContext, NodeInputError

VIDEO_SUFFIXES = (".mp4", ".mkv", ".gif")


def input_file_exists(name: str) -> Any:
    """A check that the file input ``name`` names exists (``file_not_found``)."""

    def check(values: dict[str, Any], ctx: CheckContext) -> Iterator[NodeInputError]:
        path = values.get(name)
        if isinstance(path, str | Path) and not str(path).startswith("builtin:") and not Path(path).exists():
            yield NodeInputError(f"{str(path)!r} does not exist", input=name, code="file_not_found")

    return check


def writable_video(values: dict[str, Any], ctx: CheckContext) -> Iterator[NodeInputError]:
    """``save_video``: the output's extension is one it can write."""
    path = values.get("path")
    if isinstance(path, str | Path) and Path(path).suffix.lower() not in VIDEO_SUFFIXES:
        yield NodeInputError(f"cannot write {Path(path).suffix or 'extension-less'} files; use "
                             f"{', '.join(VIDEO_SUFFIXES)}", input="path")


def _vae_config(source: Any) -> dict[str, Any] | None:
    """The VAE config of a model source without building or verifying anything (None when unknown)."""
    if not isinstance(source, str):
        return None
    from . import tiny_models

    if source == tiny_models.TINY_RANDOM_SOURCE:
        return tiny_models._VAE_CONFIG
    folder = tiny_models.trained_model_dir() if source == tiny_models.TINY_SOURCE else Path(source)
    try:
        config = json.loads((folder / "vae" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def vae_factor(source: Any) -> int | None:
    """The pixel factor of a model's VAE from its config (2 ** (blocks - 1)), or None when it cannot tell."""
    config = _vae_config(source)
    blocks = config.get("block_out_channels") if config else None
    return 2 ** (len(blocks) - 1) if isinstance(blocks, list) and blocks else None


def sizes_fit_the_model(*names: str, model_input: str = "unet") -> Any:
    """A check that the size inputs ``names`` divide by the VAE factor of the model linked to ``model_input``."""

    def check(values: dict[str, Any], ctx: CheckContext) -> Iterator[NodeInputError]:
        linked = ctx.linked(model_input)
        if linked is None or linked[0] != "load_model":
            return
        factor = vae_factor(linked[1].get("source"))
        if factor is None:
            return
        for name in names:
            value = values.get(name)
            if isinstance(value, int) and value % factor:
                yield NodeInputError(f"{name}={value} is not divisible by the VAE factor {factor} of this model; "
                                     f"try {max(factor, value // factor * factor)}", input=name)

    return check
