"""Wire value types: validation, the persistence protocol, and import hygiene of ``reelgraph.nodes``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from reelgraph.nodes.values import Conditioning, Latents, Scheduler, Video

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")


@pytest.mark.parametrize(
    "value",
    [
        Video(torch.rand(3, 3, 8, 8), fps=12.5),
        Latents(torch.randn(1, 4, 3, 2, 2)),
        Conditioning(torch.randn(1, 5, 8), torch.randn(1, 5, 8)),
        Conditioning(torch.randn(2, 5, 8), None),
    ],
)
def test_persistence_round_trip(value) -> None:
    tensors, meta = value.__reelgraph_state__()
    json.dumps(meta)
    assert all(isinstance(t, torch.Tensor) for t in tensors.values())
    restored = type(value).__reelgraph_restore__(dict(tensors), json.loads(json.dumps(meta)))
    again, meta_again = restored.__reelgraph_state__()
    assert meta_again == meta
    assert again.keys() == tensors.keys()
    assert all(torch.equal(again[k], tensors[k]) for k in tensors)


def test_validation() -> None:
    with pytest.raises(ValueError, match=r"\[F, C, H, W\]"):
        Video(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="fps"):
        Video(torch.rand(1, 3, 8, 8), fps=0)
    with pytest.raises(ValueError, match=r"\[B, C, F, h, w\]"):
        Latents(torch.rand(4, 3, 2, 2))
    with pytest.raises(ValueError, match="differs"):
        Conditioning(torch.rand(1, 5, 8), torch.rand(1, 6, 8))
    assert "fps=8" in repr(Video(torch.rand(2, 3, 4, 4)))


def test_scheduler_create_builds_fresh_instances() -> None:
    handle = Scheduler("DDIMScheduler", {"num_train_timesteps": 1000, "steps_offset": 1}, "test")
    a, b = handle.create(), handle.create()
    assert a is not b
    assert type(handle.create("dpm++")).__name__ == "DPMSolverMultistepScheduler"
    assert type(handle.create("euler")).__name__ == "EulerDiscreteScheduler"
    with pytest.raises(ValueError, match="scheduler_type"):
        handle.create("lms")


HEAVY = ("torch", "diffusers", "transformers", "av", "safetensors", "numpy", "cv2", "peft", "torchmetrics", "scipy",
         "PIL")


def test_nodes_modules_do_not_import_heavy_libraries() -> None:
    """Every module in reelgraph.nodes imports without torch & co., so listing and validating stay fast."""
    code = (
        "import importlib, pkgutil, sys\n"
        "import reelgraph.nodes\n"
        "names = [m.name for m in pkgutil.iter_modules(reelgraph.nodes.__path__)]\n"
        "for name in names:\n"
        "    importlib.import_module('reelgraph.nodes.' + name)\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(len(names), heavy)\n"
        "sys.exit(1 if heavy or len(names) < 10 else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
