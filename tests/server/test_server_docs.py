"""docs/server.md stays true to the code: every refusal code with its status, every `serve` option."""

from __future__ import annotations

import re

from reelgraph.cli import build_parser
from reelgraph.server_http import SERVER_CODES

from conftest import ROOT

DOC = (ROOT / "docs" / "server.md").read_text(encoding="utf-8")


def test_every_refusal_code_is_documented_with_its_status() -> None:
    rows = dict(re.findall(r"^\| `([a-z_]+)` \| (\d{3}) \|", DOC, re.MULTILINE))
    assert rows == {code: str(status) for code, (status, _) in SERVER_CODES.items()}


def test_every_serve_option_is_documented() -> None:
    parser = build_parser()
    serve = parser._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    options = {s for a in serve._actions for s in a.option_strings if s.startswith("--")} - {"--help", "--debug"}
    documented = set(re.findall(r"^\| `(--[a-z-]+)", DOC, re.MULTILINE))
    assert options == documented


def test_the_readme_points_at_the_server_docs() -> None:
    assert "(docs/server.md)" in (ROOT / "README.md").read_text(encoding="utf-8")
