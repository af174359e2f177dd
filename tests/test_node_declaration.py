"""The @node declaration API: ports from signatures, constraints, outputs, and import-time checks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NamedTuple

import pytest
from pydantic import Field

from reelgraph import DEFAULT_OUTPUT, NodeDefinitionError, RunContext, node
from reelgraph.node import node_type_of


class Two(NamedTuple):
    first: int
    second: str


def test_ports_from_signature_and_docstring() -> None:
    @node("demo.example", version=3, category="demo")
    def example(count: Annotated[int, Field(ge=1, description="how many")], ctx: RunContext,
                label: str = "x", path: Path = Path("a.txt")) -> Two:
        """Make two things.

        Args:
            label: the label to use
                (continued).
        """
        return Two(count, label)

    nt = node_type_of(example)
    assert (nt.name, nt.version, nt.category) == ("demo.example", 3, "demo")
    assert list(nt.inputs) == ["count", "label", "path"] and nt.context_param == "ctx"
    assert nt.inputs["count"].required and not nt.inputs["label"].required
    assert nt.inputs["count"].description == "how many"
    assert nt.inputs["label"].description == "the label to use (continued)."
    assert nt.description == "Make two things."
    assert list(nt.outputs) == ["first", "second"] and nt.outputs["first"].annotation is int
    assert example(count=2, ctx=None) == (2, "x")  # still a plain function


def test_single_output_default_name_and_override() -> None:
    @node("demo.one")
    def one() -> float:
        return 1.0

    @node("demo.named", output="value")
    def named() -> float:
        return 1.0

    @node("demo.none")
    def nothing() -> None:
        return None

    assert list(node_type_of(one).outputs) == [DEFAULT_OUTPUT] == ["result"]
    assert list(node_type_of(named).outputs) == ["value"]
    assert node_type_of(nothing).outputs == {}


def test_field_default_form() -> None:
    @node("demo.field")
    def f(steps: int = Field(25, ge=1, le=100)) -> int:
        return steps

    port = node_type_of(f).inputs["steps"]
    assert port.default == 25 and not port.required
    assert port.adapter.validate_python(100) == 100
    with pytest.raises(ValueError):
        port.adapter.validate_python(0)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: node("Bad Name")(lambda: None), "type name must match"),
        (lambda: node("demo.v", version=0)(_returns_int), "version must be an int >= 1"),
        (lambda: node("demo.noann")(_unannotated), "demo.noann' (_unannotated).x: missing type annotation"),
        (lambda: node("demo.noret")(_no_return), "missing return annotation"),
        (lambda: node("demo.var")(_varargs), "*args, **kwargs"),
        (lambda: node("demo.reserved")(_reserved), "reserved or invalid input name"),
        (lambda: node("demo.default")(_bad_default), "default 0 is not valid"),
    ],
)
def test_definition_errors_name_node_and_field(make: object, message: str) -> None:
    with pytest.raises(NodeDefinitionError) as info:
        make()  # type: ignore[operator]
    assert message in str(info.value)


def _returns_int() -> int:
    return 1


def _unannotated(x) -> int:  # type: ignore[no-untyped-def]
    return 1


def _no_return(x: int):  # type: ignore[no-untyped-def]
    return 1


def _varargs(*xs: int) -> int:
    return 1


def _reserved(type: int) -> int:
    return 1


def _bad_default(x: Annotated[int, Field(ge=1)] = 0) -> int:
    return x


def test_registering_an_undecorated_function_is_refused() -> None:
    from reelgraph import NodeRegistry

    with pytest.raises(NodeDefinitionError, match=r"decorate it with @reelgraph\.node"):
        NodeRegistry().add(_returns_int)
