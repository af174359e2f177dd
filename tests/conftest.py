"""Shared fixtures: engines that load only the built-in plugin and the test plugin (no entry points)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reelgraph import Engine

ROOT = Path(__file__).resolve().parents[1]
TEST_PLUGIN = str(Path(__file__).parent / "plugins" / "chain_nodes.py")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("REELGRAPH_THREADS", "1")  # deterministic timing-free tests; subprocesses inherit it


@pytest.fixture
def make_engine(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Engine]:
    """Build an isolated engine: built-in + test plugin, no installed entry points, no env plugins."""
    monkeypatch.delenv("REELGRAPH_PLUGINS", raising=False)

    def factory(*extra: Any, **kwargs: Any) -> Engine:
        kwargs.setdefault("entry_points", False)
        return Engine([TEST_PLUGIN, *extra], **kwargs)

    return factory


@pytest.fixture
def engine(make_engine: Callable[..., Engine]) -> Engine:
    """An isolated engine with the test plugin loaded."""
    return make_engine()


@pytest.fixture
def calls(engine: Engine) -> list[str]:
    """The test plugin's call log, emptied for this test."""
    module = next(m for name, m in sys.modules.items() if name.startswith("reelgraph_plugin_chain_nodes"))
    module.CALLS.clear()
    return module.CALLS


def wf(nodes: dict[str, Any], params: dict[str, Any] | None = None) -> dict[str, Any]:
    """A workflow document from a nodes mapping (and optional params)."""
    return {"reelgraph": 1, "name": "test", "params": params or {}, "nodes": nodes}


def link(target: str) -> dict[str, str]:
    """A link input."""
    return {"from": target}
