"""An example reelgraph plugin: two small text nodes registered through the entry point group.

Copy this folder, rename the package and the ``example.`` namespace, and ``pip install -e .`` it.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

import reelgraph


@reelgraph.node("example.repeat", category="example", output="text")
def repeat(text: str, times: Annotated[int, Field(ge=1, le=100)] = 2, sep: str = " ") -> str:
    """Repeat a text ``times`` times, joined by ``sep``.

    Args:
        text: the text to repeat.
        times: how many copies (1 to 100).
        sep: what goes between copies.
    """
    return sep.join([text] * times)


@reelgraph.node("example.word_count", category="example", output="count")
def word_count(text: str) -> int:
    """Count the words in a text."""
    return len(text.split())


@reelgraph.hookimpl
def reelgraph_register_nodes(registry: reelgraph.NodeRegistry) -> None:
    """Register this package's nodes."""
    registry.add(repeat)
    registry.add(word_count)
