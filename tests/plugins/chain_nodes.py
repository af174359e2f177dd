"""Node types used by the engine tests, loaded as a plugin from this .py file.

Every call of a node here is counted in ``CALLS`` (by type), so tests can tell what really ran.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Literal, NamedTuple

from pydantic import Field

from reelgraph import InputPath, OutputPath, RunContext, hookimpl, node, path_input

CALLS: list[str] = []


class Animal:
    """A value type that only a link can supply."""

    def __init__(self, name: str) -> None:
        self.name = name


class Dog(Animal):
    """A subclass, to check that subclass outputs fit base-class inputs."""


class Pair(NamedTuple):
    total: int
    label: str


@node("t.add", category="test")
def add(a: int, b: int = 0) -> int:
    """Add two integers."""
    CALLS.append("t.add")
    return a + b


@node("t.scale", category="test")
def scale(x: float, factor: Annotated[float, Field(gt=0, le=100)] = 2.0) -> float:
    """Multiply by a positive factor."""
    CALLS.append("t.scale")
    return x * factor


@node("t.pair", category="test")
def pair(total: int, label: str = "n") -> Pair:
    """Two outputs from one node."""
    CALLS.append("t.pair")
    return Pair(total, f"{label}={total}")


@node("t.dog", category="test")
def dog(name: str = "rex") -> Dog:
    """Make a Dog."""
    CALLS.append("t.dog")
    return Dog(name)


@node("t.animal_name", category="test", output="name")
def animal_name(animal: Animal, mode: Literal["plain", "loud"] = "plain") -> str:
    """Read an animal's name."""
    CALLS.append("t.animal_name")
    return animal.name.upper() if mode == "loud" else animal.name


@node("t.steps", category="test")
def steps(n: Annotated[int, Field(ge=1, le=1000)], ctx: RunContext, delay: float = 0.0) -> int:
    """Count to n with a progress tick per step (and an optional delay per step)."""
    CALLS.append("t.steps")
    for i in range(n):
        if delay:
            time.sleep(delay)
        ctx.progress(i + 1, n)
    return n


@node("t.fail", category="test")
def fail(x: int, message: str = "boom") -> int:
    """Always raise."""
    CALLS.append("t.fail")
    raise RuntimeError(message)


@node("t.write", category="test", side_effects=True, output="path")
def write(text: str, path: str, ctx: RunContext) -> Path:
    """Write text to a file under the run's output folder."""
    CALLS.append("t.write")
    target = ctx.resolve_output(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    return target


@node("t.str", category="test")
def to_str(x: float) -> str:
    """Format a number."""
    CALLS.append("t.str")
    return f"{x:g}"


@node("t.read_file", category="test")
def read_file(path: path_input("mem:")) -> str:  # type: ignore[valid-type]
    """Read a text file (or return the rest of a mem: value)."""
    return path[4:] if path.startswith("mem:") else Path(path).read_text()


@node("t.save_text", category="test", side_effects=True, output="path")
def save_text(text: str, ctx: RunContext, path: OutputPath = Path("out.txt")) -> Path:
    """Write text without clobbering."""
    target = ctx.claim_output(path, "path")
    target.write_text(text)
    return target


@node("t.save_anywhere", category="test", side_effects=True, output="path")
def save_anywhere(text: str, where: str, ctx: RunContext) -> Path:
    """A node that computes its own path at run time."""
    target = ctx.claim_output(where, "where")
    target.write_text(text)
    return target


@node("t.read_path", category="test")
def read_path(path: InputPath) -> str:
    """Read a text file given as an ``InputPath`` (a ``Path`` input that a ``str`` output may feed)."""
    assert isinstance(path, Path)
    return path.read_text()


@node("t.read_many", category="test")
def read_many(paths: list[InputPath], named: dict[str, InputPath] | None = None,
              pair: tuple[InputPath, str] | None = None) -> str:
    """Read several files given in containers of paths."""
    texts = [p.read_text() for p in paths]
    texts += [f"{k}={v.read_text()}" for k, v in (named or {}).items()]
    if pair is not None:
        texts.append(f"{pair[1]}:{pair[0].read_text()}")
    return "|".join(texts)


@node("t.lines", category="test")
def lines(text: str) -> list[str]:
    """Split text into lines (a ``list[str]`` output, e.g. for ``t.read_many.paths``)."""
    return text.splitlines()


@hookimpl
def reelgraph_register_nodes(registry):  # type: ignore[no-untyped-def]
    for fn in (add, scale, pair, dog, animal_name, steps, fail, write, to_str, read_file, save_text, save_anywhere,
               read_path, read_many, lines):
        registry.add(fn)
