"""Issue 16: format_text's result is bounded, and refused while it is being filled rather than after."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from reelgraph import Engine, NodeFailed
from reelgraph.nodes.basic_nodes import format_text

from conftest import wf

MAX_TEXT_CHARS = 1_000_000  # basic_nodes.MAX_TEXT_CHARS (spelt out so that this module imports on older code)

# --- format_text -------------------------------------------------------------------------------------------------


def test_format_text_refuses_a_result_past_the_cap_at_the_node_and_input(engine: Engine, tmp_path: Path) -> None:
    template = "{value:9999}" * 200  # 2.4 kB of template, 2 MB of text
    doc = wf({"t": {"type": "format_text", "inputs": {"template": template, "value": "x"}}})
    with pytest.raises(NodeFailed) as info:
        engine.run(doc, out_dir=tmp_path)
    err = info.value
    assert (err.code, err.node, err.input) == ("too_large", "t", "template")
    assert "longer than 1,000,000 characters" in err.message


def test_format_text_stops_at_the_cap_instead_of_building_the_text() -> None:
    tracemalloc.start()
    try:
        with pytest.raises(Exception) as info:
            format_text("{value:9999}" * 10_000, None, "x")  # would be a 100 MB string
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert getattr(info.value, "code", None) == "too_large"
    assert peak < 8 * MAX_TEXT_CHARS  # a few MB: never more than the cap's worth of pieces


def test_format_text_allows_exactly_the_cap_and_keeps_str_format_semantics() -> None:
    from reelgraph.nodes.basic_nodes import MAX_TEXT_CHARS as cap

    assert cap == MAX_TEXT_CHARS
    assert len(format_text("x" * (MAX_TEXT_CHARS - 9) + "{value:9}", None, 1)) == MAX_TEXT_CHARS
    with pytest.raises(Exception, match="longer than"):
        format_text("x" * (MAX_TEXT_CHARS - 8) + "{value:9}", None, 1)
    template = "a {color} cube {} {value!r} {value:>5} {color!s:^9}"
    assert format_text(template, {"color": "red"}, 3) == template.format(3, color="red", value=3)


