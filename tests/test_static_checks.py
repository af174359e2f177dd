"""``validate`` catches, without loading a model or importing torch, the mistakes that used to fail only after the
model load (issue 17): a size the model's VAE cannot take, an extension save_video cannot write, a missing clip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CODE = """
import json, sys
from reelgraph import Engine
engine = Engine(entry_points=False, env=False)
problems = engine.validate(sys.argv[1], json.loads(sys.argv[2]))
print(json.dumps([[p.code, p.node, p.input] for p in problems]))
print("torch imported:", "torch" in sys.modules)
"""


@pytest.mark.parametrize(("workflow", "params", "expected"), [
    ("text2video.json", {"height": 33}, [["invalid_value", "sample", "height"]]),
    ("text2video.json", {"width": 30}, [["invalid_value", "sample", "width"]]),
    ("text2video.json", {"output": "video.avi"}, [["invalid_value", "save", "path"]]),
    ("edit_video.json", {"source": "nothere.mp4"}, [["file_not_found", "clip", "path"]]),
    ("text2video.json", {}, []),
])
def test_validate_catches_mistakes_without_a_model(tmp_path: Path, workflow: str, params: dict, expected: list) -> None:
    proc = subprocess.run([sys.executable, "-c", CODE, str(ROOT / "workflows" / workflow), json.dumps(params)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "REELGRAPH_PLUGINS": ""})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert json.loads(lines[0]) == expected
    assert lines[1] == "torch imported: False"
