"""The README's commands and examples run as written, so they cannot rot."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
FENCE = re.compile(r"^```(?P<info>[^\n]*)\n(?P<body>.*?)^```$", re.MULTILINE | re.DOTALL)
BLOCKS = [(m["info"].split(), m["body"]) for m in FENCE.finditer(README)]


def files() -> dict[str, str]:
    """Blocks declared as files (```lang file=NAME)."""
    out = {}
    for info, body in BLOCKS:
        for word in info[1:]:
            if word.startswith("file="):
                out[word[5:]] = body
    return out


def sessions() -> list[tuple[str, str]]:
    """(command, expected stdout) pairs from the ```console blocks."""
    pairs: list[tuple[str, str]] = []
    for info, body in BLOCKS:
        if info[:1] != ["console"]:
            continue
        for chunk in re.split(r"^\$ ", body, flags=re.MULTILINE)[1:]:
            command, _, output = chunk.partition("\n")
            pairs.append((command, output))
    return pairs


def test_first_lines_are_the_two_commands() -> None:
    info, body = BLOCKS[0]
    assert info == ["bash"]
    main, tests = body.strip().splitlines()
    assert main.endswith("reelgraph run workflows/text2video.json") and "pip install torch==2.13.0" in main
    assert tests.endswith("python -m pytest -q")
    assert "python -m pytest -q\n" in (ROOT / ".ci" / "run").read_text(), "CI must run the README's test command"


def test_file_blocks_match_the_repository_or_parse() -> None:
    for name, body in files().items():
        if (ROOT / name).exists():
            assert json.loads((ROOT / name).read_text()) == json.loads(body), f"README copy of {name} is stale"
        elif name.endswith(".json"):
            json.loads(body)


ENV: dict[str, str] = {}


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("readme")
    ENV.update(os.environ, REELGRAPH_HOME=str(folder / ".reelgraph-home"), HF_HUB_OFFLINE="1")
    shutil.copytree(ROOT / "workflows", folder / "workflows")
    for name, body in files().items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(body)
    return folder


@pytest.mark.parametrize(("command", "expected"), sessions(), ids=[c for c, _ in sessions()])
def test_console_sessions(sandbox: Path, command: str, expected: str) -> None:
    argv = command.split()
    assert argv[0] == "reelgraph"
    proc = subprocess.run([sys.executable, "-m", "reelgraph", *argv[1:]], cwd=sandbox, capture_output=True,
                          text=True, timeout=300, env=ENV)
    assert proc.stdout == expected, proc.stderr


def test_mermaid_block_is_the_graph_output(sandbox: Path) -> None:
    mermaid = next(body for info, body in BLOCKS if info[:1] == ["mermaid"])
    proc = subprocess.run([sys.executable, "-m", "reelgraph", "graph", "workflows/hello.json"], cwd=sandbox,
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout == mermaid


def checked(code: str) -> str:
    """Turn README lines ``print(expr)  # expected`` into assertions that ``str(expr) == expected``."""
    out = []
    for line in code.splitlines():
        m = re.match(r"^(\s*)print\((.*)\)\s+# (.*)$", line)
        out.append(f"{m[1]}assert str({m[2]}) == {m[3]!r}, str({m[2]})" if m else line)
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("index", [i for i, (info, _) in enumerate(BLOCKS) if info == ["python"]])
def test_python_examples(sandbox: Path, index: int) -> None:
    code = checked(BLOCKS[index][1])
    assert "assert str(" in code, "a README python example should show what it prints"
    proc = subprocess.run([sys.executable, "-c", code], cwd=sandbox, capture_output=True, text=True, timeout=300,
                          env=ENV)
    assert proc.returncode == 0, proc.stderr


def test_main_job_writes_a_video(sandbox: Path) -> None:
    main = BLOCKS[0][1].strip().splitlines()[0]
    command = main.rsplit("&&", 1)[1].split()
    proc = subprocess.run([sys.executable, "-m", "reelgraph", *command[1:]], cwd=sandbox, capture_output=True,
                          text=True, timeout=600, env=ENV)
    assert proc.returncode == 0, proc.stderr
    from reelgraph.nodes.video_io import read_video

    assert read_video(sandbox / "outputs" / "text2video.mp4").num_frames == 8


def test_local_links_and_pictures_exist() -> None:
    """Every relative link or image in the README points at a file or folder of the repository."""
    links = re.findall(r"\]\(([^)\s]+)\)", README)
    targets = {t.split("#")[0] for t in links if "://" not in t and not t.startswith("#")}
    assert "docs/images/text2video.png" in targets
    missing = sorted(t for t in targets if t and not (ROOT / t).exists())
    assert missing == []


def example_commands() -> list[str]:
    """The ``reelgraph run ...`` commands of the README's example block (continued lines joined)."""
    body = next(b for info, b in BLOCKS[1:] if info[:1] == ["bash"] and "--set" in b)
    return [line for line in body.replace("\\\n", " ").splitlines() if line.startswith("reelgraph run")]


@pytest.mark.parametrize("command", example_commands(), ids=lambda c: c.split()[2])
def test_example_commands_run_as_written(tmp_path: Path, command: str) -> None:
    """Run from a user's folder holding what the command names: their own diffusers model folder (a copy of the
    random tiny model) and their own clip; relative ``--set`` paths are theirs (resolved in that folder)."""
    import shlex

    from reelgraph.nodes.tiny_models import builtin_model
    from reelgraph.nodes.video_io import read_video

    user = tmp_path / "me"
    shutil.copytree(ROOT / "workflows", user / "workflows")
    argv = shlex.split(command)
    sets = dict(a.split("=", 1) for a in argv[argv.index("--set"):] if "=" in a)
    if "model" in sets:
        shutil.copytree(builtin_model("builtin:tiny-random"), user / sets["model"])
    if "source" in sets:
        (user / sets["source"]).parent.mkdir(parents=True)
        shutil.copyfile(ROOT / "workflows" / "assets" / "red_circle_right.mp4", user / sets["source"])
    proc = subprocess.run([sys.executable, "-m", "reelgraph", *argv[1:], "--quiet"], cwd=user, capture_output=True,
                          text=True, timeout=900, env=ENV)
    assert proc.returncode == 0, proc.stderr
    out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else Path("outputs")
    (video,) = [v for v in (user / out).glob("*.mp4")]
    clip = read_video(video)
    expected = int(sets.get("frames", clip.num_frames))
    assert clip.num_frames == expected and clip.frames.shape[-2:] == (int(sets.get("height", 32)),
                                                                       int(sets.get("width", 32)))
