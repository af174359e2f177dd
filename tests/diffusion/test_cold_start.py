"""A fresh ``reelgraph run``: loading is announced line by line, libraries a workflow does not use stay unloaded,
and the prompt exit keeps exit codes, output and ``atexit`` handlers."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import ROOT


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def _reelgraph(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reelgraph", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_model_loading_is_announced_before_it_takes_time(tmp_path: Path) -> None:
    proc = _reelgraph("run", str(ROOT / "workflows" / "text2video.json"), "--set", "model=builtin:tiny-random",
                      "--set", "steps=2", "--out", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    first = lines.index("model (load_model): importing torch...")  # while cache keys are computed
    assert lines[first + 1:first + 4] == ["[1/5] model (load_model): importing diffusers, transformers...",
                                          "[1/5] model (load_model): loading builtin:tiny-random...",
                                          lines[first + 3]]
    assert lines[first + 3].startswith("[1/5] model (load_model) ") and lines[first + 3].endswith("s")


def test_stages_are_events_with_their_text(tmp_path: Path) -> None:
    proc = _reelgraph("run", str(ROOT / "workflows" / "text2video.json"), "--set", "model=builtin:tiny-random",
                      "--set", "steps=1", "--events", "jsonl", "--quiet", "--out", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    stages = [(e["node"], e["message"]) for e in map(json.loads, proc.stdout.splitlines())
              if e["event"] == "node_stage"]
    assert stages == [("model", "importing torch"), ("model", "importing diffusers, transformers"),
                      ("model", "loading builtin:tiny-random")]


def test_text_to_video_leaves_the_libraries_it_does_not_use_unloaded(tmp_path: Path) -> None:
    proc = _python(f"""
        import sys
        from reelgraph import Engine
        engine = Engine(entry_points=False, env=False)
        params = {{"model": "builtin:tiny-random", "steps": 1}}
        engine.run({str(ROOT / "workflows" / "text2video.json")!r}, params, outputs=["decode.video"])
        print(sorted(m for m in ("torchmetrics", "cv2", "ray", "diffusers.pipelines.text_to_video_synthesis",
                                 "fastapi", "uvicorn") if m in sys.modules))
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_prompt_exit_keeps_codes_output_and_atexit_handlers(tmp_path: Path) -> None:
    plugin = tmp_path / "bye.py"
    marker = tmp_path / "atexit-ran"
    plugin.write_text(textwrap.dedent(f"""
        import atexit, pathlib
        atexit.register(lambda: pathlib.Path({str(marker)!r}).write_text("yes"))
    """))
    proc = _reelgraph("nodes", "--plugin", str(plugin), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "load_model" in proc.stdout and proc.stdout.endswith("\n")  # all of stdout, flushed
    assert marker.read_text() == "yes"
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert _reelgraph("validate", str(bad), cwd=tmp_path).returncode == 1
    assert _reelgraph("run", str(bad), "--set", "x", cwd=tmp_path).returncode == 2
