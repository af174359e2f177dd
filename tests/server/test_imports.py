"""The web stack loads only for `reelgraph serve`: `import reelgraph`, `validate` and `schema` stay fast."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT

CHECK = """
import sys
from reelgraph.cli import main
code = main(["validate", "workflows/hello.json"])
main(["schema"])
heavy = sorted(m for m in ("fastapi", "starlette", "uvicorn", "torch", "reelgraph.server") if m in sys.modules)
sys.stderr.write(f"HEAVY={heavy}\\n")
"""


def test_validate_and_schema_import_no_server_stack() -> None:
    out = subprocess.run([sys.executable, "-c", CHECK], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "HEAVY=[]" in out.stderr, out.stderr
