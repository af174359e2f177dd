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

#: Tests that take seconds each here (whole shipped workflows in a subprocess, Ray, the big fuzzers), marked
#: ``slow`` so that ``pytest -m "not slow"`` is a quick loop; CI runs everything. Patterns match node ids
#: (``fnmatch``); measured with ``pytest --durations=60``.
SLOW_TESTS = (
    "tests/test_fuzz.py::test_generated_workflows_end_in_coded_problems",
    "tests/test_fuzz.py::test_fuzz_count_is_reported",
    "tests/test_fuzz.py::test_cli_never_shows_a_traceback",
    "tests/test_fuzz.py::test_ten_thousand_node_graphs",
    "tests/diffusion/test_batch_ray.py::*",
    "tests/diffusion/test_diffusion_workflows.py::test_changing_output_path_reuses_everything_else_across_processes",
    "tests/diffusion/test_diffusion_workflows.py::test_shipped_workflows_run_from_the_cli*",
    "tests/diffusion/*::*_from_the_cli*",
    "tests/diffusion/test_animatediff_sampling.py::test_controlnet_matches_animatediff_controlnet_pipeline*",
    "tests/diffusion/test_animatediff_workflows.py::test_animatediff_*_equals_*",
    "tests/test_readme.py::test_main_job_writes_a_video",
    "tests/test_readme.py::test_python_examples*",
    "tests/test_readme.py::test_example_commands_run_as_written*",
    "tests/server/test_browser.py::*",
    "tests/server/test_durability.py::*",
    "tests/server/test_load.py::*",
    "tests/diffusion/test_model_safety.py::test_catastrophic_alpha_pattern_returns_promptly",
    "tests/test_integrity.py::test_a_second_signal_lets_the_current_write_finish",
    "tests/diffusion/test_diffusion_sampling.py::test_ddim_round_trip_on_random_weights_report",
    "tests/diffusion/test_default_model.py::test_half_precision_draws_the_same_prompt*",
    "tests/diffusion/test_train_tiny.py::*",
    "tests/diffusion/test_companions.py::test_controlnet_*",
    "tests/diffusion/test_companions.py::test_lora_*",
    "tests/diffusion/test_companions.py::test_companion_training_*",
    "tests/diffusion/test_companions.py::test_shipped_companions_are_the_export_*",
    "tests/diffusion/test_cold_start.py::*",
    "tests/diffusion/test_model_files.py::test_loads_hold_no_more_than_the_weights",
    "tests/diffusion/test_cache_integrity.py::test_thread_count_and_device_are_part_of_the_key",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests listed in :data:`SLOW_TESTS` as ``slow``."""
    from fnmatch import fnmatch

    for item in items:
        if any(fnmatch(item.nodeid, pattern) for pattern in SLOW_TESTS):
            item.add_marker(pytest.mark.slow)


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
