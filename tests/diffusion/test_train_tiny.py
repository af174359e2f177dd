"""``tools/train_tiny.py``: a few steps run, a resumed run is bit-identical, the export loads in the engine."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("av")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def train_tiny() -> ModuleType:
    spec = importlib.util.spec_from_file_location("train_tiny", ROOT / "tools" / "train_tiny.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_tiny"] = module
    spec.loader.exec_module(module)
    return module


def _args(train_tiny: ModuleType, folder: Path, *extra: str):  # type: ignore[no-untyped-def]
    argv = ["train", "--ckpt-dir", str(folder), "--vae-steps", "2", "--vae-batch", "1", "--steps", "3",
            "--batch", "2", "--save-every", "1000", "--log-every", "1000", *extra]
    return train_tiny.parser().parse_args(argv)


def _same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, dict):
            _same_state(x, y)
        elif isinstance(x, torch.Tensor):
            assert torch.equal(x, y), key
        elif isinstance(x, list) and x and isinstance(x[0], dict):
            for u, v in zip(x, y, strict=True):
                _same_state(u, v)
        else:
            assert x == y, key


def test_resume_is_bit_identical_and_export_loads(train_tiny: ModuleType, tmp_path: Path,
                                                  reelgraph_home: Path) -> None:
    straight = train_tiny.train(_args(train_tiny, tmp_path / "straight"))
    assert straight.step == 5 and len(straight.losses) == 5
    assert straight.scaling_factor != 1.0
    assert (tmp_path / "straight" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Stop after 3 steps (VAE phase done, one UNet step), then resume to the end.
    first = _args(train_tiny, tmp_path / "split", "--save-every", "3")
    first.steps = 1
    partial = train_tiny.Trainer(first)
    for _ in range(3):
        partial.train_step()
    train_tiny.save_checkpoint(partial, tmp_path / "split")
    resumed = train_tiny.train(_args(train_tiny, tmp_path / "split", "--resume"))
    assert resumed.step == 5
    _same_state(straight.state_dict(), resumed.state_dict())

    out = train_tiny.export_model(resumed, tmp_path / "model")
    for line in (out / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ", 1)
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    from reelgraph.nodes.model_loading import load_model

    unet, vae, _, sched = load_model(str(out), device="cpu")
    assert unet.module.dtype == torch.float32  # fp16 files, loaded in the engine's float32
    assert sched.config["prediction_type"] == "v_prediction"
    assert vae.scaling_factor == pytest.approx(resumed.scaling_factor, rel=1e-3)
