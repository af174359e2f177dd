"""Docs stay true to code: every hook has a test and a documented signature; every code is documented."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from reelgraph import hookspecs
from reelgraph.errors import RUNTIME_CODES, VALIDATION_CODES

from conftest import ROOT

ENGINE_DOC = (ROOT / "docs" / "engine.md").read_text(encoding="utf-8")


def hook_names() -> list[str]:
    return [name for name, fn in vars(hookspecs).items() if name.startswith("reelgraph_") and callable(fn)]


def test_every_hook_is_documented_with_its_signature() -> None:
    assert hook_names()
    for name in hook_names():
        params = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
        assert f"### {name}({params})" in ENGINE_DOC


def test_every_hook_has_a_test() -> None:
    tests = "\n".join(p.read_text(encoding="utf-8") for p in Path(__file__).parent.glob("test_*.py"))
    for name in hook_names():
        assert re.search(rf"def test_hook_{name}\b", tests), f"no test_hook_{name}"


def test_hook_reelgraph_register_nodes(make_engine) -> None:  # type: ignore[no-untyped-def]
    """The hook is how every node type arrives, the built-in ones included."""
    engine = make_engine()
    assert engine.registry.get("format_text").plugin == "builtin"
    assert engine.registry.get("t.add") is not None


def test_error_reference_is_generated_and_complete() -> None:
    from reelgraph.docs import error_reference_markdown
    from reelgraph.errors import FIXES

    assert set(FIXES) == set(VALIDATION_CODES) | set(RUNTIME_CODES)
    assert (ROOT / "docs" / "errors.md").read_text(encoding="utf-8") == error_reference_markdown(), (
        "regenerate: reelgraph errors --markdown > docs/errors.md")
    assert "docs/errors.md" in ENGINE_DOC or "(errors.md)" in ENGINE_DOC


def test_every_code_used_in_the_code_is_documented() -> None:
    used: set[str] = set()
    for folder in ("core", "nodes"):
        for path in (ROOT / folder).glob("*.py"):
            text = path.read_text(encoding="utf-8")
            used |= set(re.findall(r"""(?:Problem\(|code=)\s*["']([a-z_]+)["']""", text))
    assert used <= set(VALIDATION_CODES) | set(RUNTIME_CODES), used - set(VALIDATION_CODES) - set(RUNTIME_CODES)
