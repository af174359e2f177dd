"""The engine stays a general graph engine: importing it, validating and listing nodes never import torch."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def test_import_reelgraph_does_not_import_torch() -> None:
    code = "import reelgraph, sys; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_validate_nodes_and_schema_do_not_import_torch() -> None:
    code = (
        "import sys, io, contextlib\n"
        "from reelgraph.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    assert main(['validate', {str(ROOT / 'workflows' / 'hello.json')!r}]) == 0\n"
        "    assert main(['nodes']) == 0\n"
        "    assert main(['schema']) == 0\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
