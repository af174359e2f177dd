"""Shared set-up for the diffusion building-block tests: offline hub, one CPU thread, a tiny model folder.

The test modules skip themselves (``pytest.importorskip``) where torch, diffusers, transformers, PyAV or
safetensors are not installed, since those are optional for the engine.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

try:
    import torch
except ImportError:  # the test modules skip themselves
    pass
else:
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def reelgraph_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private ``REELGRAPH_HOME`` for the whole session, so tests never touch the user's cache."""
    home = tmp_path_factory.mktemp("reelgraph-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REELGRAPH_HOME", str(home))
        yield home


@pytest.fixture(scope="session")
def tiny_dir(reelgraph_home: Path) -> Path:
    """The ``builtin:tiny`` model folder, built once per session."""
    from reelgraph.nodes.tiny_models import ensure_tiny_model

    return ensure_tiny_model()


@pytest.fixture(scope="session")
def tiny(tiny_dir: Path) -> Iterator[tuple]:
    """``load_model("builtin:tiny-random")`` handles (UNet3D, VAE, TextEncoder, Scheduler)."""
    from reelgraph.nodes.model_loading import clear_model_cache, load_model

    yield load_model("builtin:tiny-random", device="cpu")
    clear_model_cache()
