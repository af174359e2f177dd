"""The cascade workflow: keyframes -> interpolation -> 2x super-resolution -> mp4, from the CLI and in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from reelgraph import Engine
from reelgraph.nodes.video_io import read_video

torch = pytest.importorskip("torch")
pytest.importorskip("cv2")

ROOT = Path(__file__).resolve().parents[2]
CASCADE = ROOT / "workflows" / "cascade.json"
FAST = {"steps": 3, "sr_steps": 4}


def test_cascade_runs_from_the_cli(reelgraph_home: Path, tmp_path: Path) -> None:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "reelgraph", "run", str(CASCADE), "--out", str(tmp_path),
                           "--set", "steps=3", "--set", "sr_steps=4", "--quiet",
                           "--record", str(tmp_path / "record.json")],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # one torch thread, as in-process tests use
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    written = tmp_path / "cascade.mp4"
    assert proc.stdout.strip() == f"save.path = {written}"
    video = read_video(written)
    assert (video.num_frames, video.fps, video.height, video.width) == (7, 8.0, 64, 64)
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["status"] == "finished"
    print(f"cascade from the CLI (model build included when not cached): {seconds:.1f} s")
    assert seconds < 120


def test_cascade_stages(reelgraph_home: Path, make_engine: Callable[..., Engine], tmp_path: Path) -> None:
    engine = make_engine()
    outputs = ["keys_decode.video", "interp.video", "interp.fps", "upscale.video", "sr.latents", "sr_decode.video"]
    result = engine.run(CASCADE, FAST, outputs=outputs, out_dir=tmp_path).outputs
    keys, interp = result["keys_decode.video"], result["interp.video"]
    assert (keys.num_frames, keys.height, keys.fps) == (4, 32, 4.0)
    assert interp.num_frames == 7 and result["interp.fps"] == interp.fps == 8.0
    assert torch.equal(interp.frames[::2], keys.frames)
    assert (result["upscale.video"].height, result["upscale.video"].width) == (64, 64)
    assert tuple(result["sr.latents"].tensor.shape) == (1, 4, 7, 16, 16)
    final = result["sr_decode.video"]
    assert (final.num_frames, final.height, final.width, final.fps) == (7, 64, 64, 8.0)
    # strength < 1 re-generates on top of the upscaled clip instead of from scratch
    assert not torch.allclose(final.frames, result["upscale.video"].frames, atol=1e-3)
    assert not engine.validate(CASCADE, {"interpolation": "blend", "multiplier": 4})
    problems = engine.validate(CASCADE, {"interpolation": "morph"})
    assert [(p.code, p.node, p.input) for p in problems] == [("invalid_value", "interp", "method")]
