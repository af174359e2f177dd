"""Every validation code, with exact node/input locations, and many problems reported in one pass."""

from __future__ import annotations

import pytest

from reelgraph import Engine, Problem, WorkflowInvalid

from conftest import link, wf


def located(problems: list[Problem]) -> list[tuple[str, str | None, str | None]]:
    return [(p.code, p.node, p.input) for p in problems]


def test_valid_workflow_has_no_problems(engine: Engine) -> None:
    doc = wf({"a": {"type": "t.add", "inputs": {"a": 1, "b": 2}},
              "s": {"type": "t.scale", "inputs": {"x": link("a.result")}}})
    assert engine.validate(doc) == []


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ([], [("bad_format", None, None)]),
        ({"reelgraph": 2, "nodes": {}}, [("bad_format", None, None)]),
        ({"reelgraph": 1}, [("bad_format", None, None)]),
        ({"reelgraph": 1, "nodes": {"a": {"type": "t.add", "inputs": {"a": 1}, "colour": 3}}},
         [("bad_format", "a", None)]),
        ({"reelgraph": 1, "nodes": {"a": {"type": "t.add", "inputs": {"a": {"from": "nodot"}}}}},
         [("bad_format", "a", "a")]),
        ({"reelgraph": 1, "nodes": {"a.b": {"type": "t.add", "inputs": {"a": 1}}}},
         [("bad_format", "a.b", None)]),
        ({"reelgraph": 1, "params": {"p": {"type": "complex"}}, "nodes": {}}, [("bad_format", None, "p")]),
    ],
)
def test_bad_format(engine: Engine, doc: object, expected: list[tuple[str, str | None, str | None]]) -> None:
    assert located(engine.validate(doc)) == expected  # type: ignore[arg-type]


def test_unknown_node_type_suggests_close_name(engine: Engine) -> None:
    problems = engine.validate(wf({"x": {"type": "t.ad", "inputs": {}}}))
    assert located(problems) == [("unknown_node_type", "x", None)]
    assert "did you mean 't.add'" in problems[0].message


def test_missing_and_unknown_input(engine: Engine) -> None:
    problems = engine.validate(wf({"x": {"type": "t.add", "inputs": {"bb": 1}}}))
    assert located(problems) == [("unknown_input", "x", "bb"), ("missing_input", "x", "a")]
    assert "did you mean 'b'" in problems[0].message


def test_type_mismatch_on_edge(engine: Engine) -> None:
    doc = wf({"p": {"type": "t.pair", "inputs": {"total": 1}},
              "a": {"type": "t.add", "inputs": {"a": link("p.label")}}})
    problems = engine.validate(doc)
    assert located(problems) == [("type_mismatch", "a", "a")]
    assert "str" in problems[0].message and "int" in problems[0].message


def test_int_to_float_and_subclass_edges_are_allowed(engine: Engine) -> None:
    doc = wf({"a": {"type": "t.add", "inputs": {"a": 1}},
              "s": {"type": "t.scale", "inputs": {"x": link("a.result")}},
              "d": {"type": "t.dog", "inputs": {}},
              "n": {"type": "t.animal_name", "inputs": {"animal": link("d.result")}}})
    assert engine.validate(doc) == []


def test_float_does_not_fit_int(engine: Engine) -> None:
    doc = wf({"s": {"type": "t.scale", "inputs": {"x": 1.0}},
              "a": {"type": "t.add", "inputs": {"a": link("s.result")}}})
    assert located(engine.validate(doc)) == [("type_mismatch", "a", "a")]


@pytest.mark.parametrize(
    ("inputs", "bad_input"),
    [
        ({"x": 1.0, "factor": 0}, "factor"),  # gt=0
        ({"x": 1.0, "factor": 101}, "factor"),  # le=100
        ({"x": "abc"}, "x"),  # not a number
        ({"x": [1]}, "x"),
    ],
)
def test_invalid_literal(engine: Engine, inputs: dict[str, object], bad_input: str) -> None:
    assert located(engine.validate(wf({"s": {"type": "t.scale", "inputs": inputs}}))) == [
        ("invalid_value", "s", bad_input)
    ]


def test_literal_for_link_only_input(engine: Engine) -> None:
    problems = engine.validate(wf({"n": {"type": "t.animal_name", "inputs": {"animal": "rex"}}}))
    assert located(problems) == [("invalid_value", "n", "animal")]
    assert "only a link" in problems[0].message


def test_literal_choice(engine: Engine) -> None:
    doc = wf({"d": {"type": "t.dog", "inputs": {}},
              "n": {"type": "t.animal_name", "inputs": {"animal": link("d.result"), "mode": "quiet"}}})
    assert located(engine.validate(doc)) == [("invalid_value", "n", "mode")]


def test_dangling_links(engine: Engine) -> None:
    doc = wf({"a": {"type": "t.add", "inputs": {"a": link("ghost.result")}},
              "b": {"type": "t.add", "inputs": {"a": link("a.total")}}})
    problems = engine.validate(doc)
    assert located(problems) == [("dangling_link", "a", "a"), ("dangling_link", "b", "a")]
    assert "ghost" in problems[0].message and "'total'" in problems[1].message


def test_cycle_names_the_nodes(engine: Engine) -> None:
    doc = wf({"a": {"type": "t.add", "inputs": {"a": link("c.result")}},
              "b": {"type": "t.add", "inputs": {"a": link("a.result")}},
              "c": {"type": "t.add", "inputs": {"a": link("b.result")}},
              "ok": {"type": "t.add", "inputs": {"a": 1}},
              "self": {"type": "t.add", "inputs": {"a": 1, "b": link("self.result")}}})
    problems = engine.validate(doc)
    assert located(problems) == [("cycle", "a", "a"), ("cycle", "self", "b")]
    assert "a -> b -> c -> a" in problems[0].message


def test_params_unknown_missing_invalid_and_mismatched(engine: Engine) -> None:
    doc = wf(
        {"a": {"type": "t.add", "inputs": {"a": {"param": "count"}, "b": {"param": "nope"}}},
         "s": {"type": "t.scale", "inputs": {"x": 1, "factor": {"param": "factor"}}},
         "l": {"type": "t.add", "inputs": {"a": {"param": "label"}}}},
        params={"count": {"type": "int"}, "factor": {"type": "float", "default": 500.0},
                "label": {"type": "str", "default": "x"}},
    )
    problems = engine.validate(doc, params={"extra": 1})
    assert located(problems) == [
        ("unknown_param", None, "extra"),
        ("missing_param", None, "count"),
        ("unknown_param", "a", "b"),
        ("invalid_value", "s", "factor"),
        ("type_mismatch", "l", "a"),
    ]


def test_param_value_of_wrong_type(engine: Engine) -> None:
    doc = wf({"a": {"type": "t.add", "inputs": {"a": {"param": "n"}}}}, params={"n": {"type": "int", "default": 1}})
    assert located(engine.validate(doc, params={"n": "three"})) == [("invalid_value", None, "n")]
    assert engine.validate(doc, params={"n": "3"}) == []  # CLI text converts


def test_param_with_null_default_is_optional_and_feeds_none(engine: Engine, tmp_path) -> None:
    doc = wf({"r": {"type": "t.read_many", "inputs": {"paths": [], "named": {"param": "named"}}},
              "a": {"type": "t.add", "inputs": {"a": 1, "b": {"param": "count"}}}},
             params={"named": {"type": "json", "default": None}, "count": {"type": "int", "default": None}})
    # Unset, the optional param feeds None: an input that takes None runs, one that does not is refused there.
    assert located(engine.validate(doc)) == [("invalid_value", "a", "b")]
    assert engine.validate(doc, params={"count": 2}) == []
    assert engine.run(doc, params={"count": 2}).outputs["r.result"] == ""
    (tmp_path / "x.txt").write_text("hi")
    given = {"count": 2, "named": {"k": str(tmp_path / "x.txt")}}
    assert engine.run(doc, params=given).outputs["r.result"] == "k=hi"


def test_many_problems_in_one_pass(engine: Engine) -> None:
    doc = wf({
        "a": {"type": "t.nope", "inputs": {}},
        "b": {"type": "t.add", "inputs": {"zz": 1}},
        "c": {"type": "t.scale", "inputs": {"x": link("missing.out"), "factor": -1}},
        "d": {"type": "t.add", "inputs": {"a": {"from": 5}}},
    })
    assert located(engine.validate(doc)) == [
        ("unknown_node_type", "a", None),
        ("unknown_input", "b", "zz"),
        ("missing_input", "b", "a"),
        ("invalid_value", "c", "factor"),
        ("bad_format", "d", "a"),
        ("dangling_link", "c", "x"),
    ]


def test_run_refuses_invalid_workflow_and_runs_nothing(engine: Engine, calls: list[str]) -> None:
    doc = wf({"a": {"type": "t.add", "inputs": {"a": 1}}, "b": {"type": "t.add", "inputs": {"a": "x"}}})
    with pytest.raises(WorkflowInvalid) as info:
        engine.run(doc)
    assert located(info.value.problems) == [("invalid_value", "b", "a")]
    assert calls == []


def test_unknown_requested_output(engine: Engine) -> None:
    doc = wf({"a": {"type": "t.add", "inputs": {"a": 1}}})
    assert located(engine.validate(doc, outputs=["a.nope", "zz"])) == [
        ("unknown_output", "a", None), ("unknown_output", "zz", None)
    ]


def test_static_checks_report_located_problems_before_running(make_engine) -> None:  # type: ignore[no-untyped-def]
    """A node's ``check`` sees its literal values and the linked node's, and reports without running anything."""
    from reelgraph import CheckContext, NodeInputError, hookimpl, node

    ran: list[str] = []

    def check_even(values: dict, ctx: CheckContext):  # type: ignore[no-untyped-def]
        source = ctx.linked("x")
        if values["n"] % 2:
            yield NodeInputError("n must be even", input="n")
        if source is not None and source[1].get("a", 0) < 0:
            yield NodeInputError(f"{source[0]} gives a negative number", input="x", code="invalid_value")

    @node("chk.even", category="test", check=check_even)
    def even(x: int, n: int = 2) -> int:
        """Needs an even n."""
        ran.append("even")
        return x * n

    class Plugin:
        @hookimpl
        def reelgraph_register_nodes(self, registry):  # type: ignore[no-untyped-def]
            registry.add(even)

    engine = make_engine(Plugin())
    doc = {"reelgraph": 1, "name": "c", "nodes": {"a": {"type": "t.add", "inputs": {"a": -1}},
                                                  "e": {"type": "chk.even", "inputs": {"x": {"from": "a.result"},
                                                                                       "n": 3}}}}
    problems = engine.validate(doc)
    assert [(p.code, p.node, p.input) for p in problems] == [("invalid_value", "e", "n"), ("invalid_value", "e", "x")]
    assert ran == []
