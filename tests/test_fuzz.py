"""Fuzzing: malformed workflows always end in located, coded problems, never an unhandled exception.

Hypothesis generates documents from broken JSON to plausible graphs over the cheap built-in and test
node types (wrong JSON types, huge/negative numbers, NaN/inf, deep nesting, unicode ids, links to self
and to missing nodes, cycles, unknown fields, params of the wrong type). Each is validated and, when
valid, run. The count of documents tried is printed.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reelgraph import Engine, NodeFailed, Problem, RunInterrupted
from reelgraph.cli import main as cli_main
from reelgraph.errors import RUNTIME_CODES, VALIDATION_CODES

#: The inputs of the cheap types, so that many generated documents are nearly valid and get to run.
TYPE_INPUTS = {"t.add": ["a", "b"], "t.scale": ["x", "factor"], "t.pair": ["total", "label"], "t.str": ["x"],
               "t.animal_name": ["animal", "mode"], "format_text": ["template", "values", "value"],
               "integer": ["value"], "number": ["value"], "text": ["value"], "seed": ["base", "offset"],
               "int_range": ["start", "stop", "step"], "t.fail": ["x", "message"]}
CHEAP_TYPES = ["t.add", "t.scale", "t.pair", "t.dog", "t.animal_name", "t.str", "t.fail", "format_text", "text",
               "integer", "number", "seed", "int_range", "no.such.type", "", "T.ADD"]
OUTPUTS = ["result", "value", "text", "seed", "values", "total", "label", "name", "nope", ""]
INPUT_NAMES = ["a", "b", "x", "factor", "total", "label", "animal", "mode", "template", "values", "value", "base",
               "offset", "start", "stop", "step", "message", "name", "zzz", "type", "é"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.sampled_from([0, 1, -1, 2**63, 10**30, 1e308, -1e-308, "nan", "{}", "{value}", "{:>99999999}"]),
)
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=5), inner, max_size=4)),
                           max_leaves=6)
node_ids = st.one_of(st.sampled_from(["a", "b", "c", "d", "e"]), st.text(min_size=0, max_size=6))


@st.composite
def input_values(draw: Any, ids: list[str]) -> Any:
    kind = draw(st.integers(0, 6))
    if kind == 6:
        return draw(st.integers(-3, 10))
    if kind == 0 and ids:
        return {"from": f"{draw(st.sampled_from(ids))}.{draw(st.sampled_from(OUTPUTS))}"}
    if kind == 1:
        return {"from": draw(st.one_of(st.text(max_size=8), st.integers(), st.none()))}
    if kind == 2:
        return {"param": draw(st.one_of(st.sampled_from(["p", "q", "n"]), st.integers(), st.text(max_size=3)))}
    return draw(json_values)


@st.composite
def plausible_documents(draw: Any) -> Any:
    """Well-formed graphs over the cheap types with the right input names: mostly valid, so they run."""
    ids = draw(st.lists(st.sampled_from(["a", "b", "c", "d", "e", "é✓"]), min_size=1, max_size=5, unique=True))
    nodes = {}
    for node_id in ids:
        node_type = draw(st.sampled_from(sorted(TYPE_INPUTS)))
        names = draw(st.lists(st.sampled_from(TYPE_INPUTS[node_type]), max_size=3, unique=True))
        nodes[node_id] = {"type": node_type, "inputs": {n: draw(st.one_of(
            st.integers(-2, 5), st.sampled_from(["{value}", "x", 2.5]),
            st.sampled_from([{"from": f"{i}.{o}"} for i in ids for o in ("result", "value", "seed", "text")])))
            for n in names}}
    return {"reelgraph": 1, "nodes": nodes}


@st.composite
def documents(draw: Any) -> Any:
    if draw(st.integers(0, 2)) == 0:
        return draw(plausible_documents())
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)  # not even an object, mostly
    ids = draw(st.lists(node_ids, min_size=0, max_size=7, unique=True))
    nodes: dict[str, Any] = {}
    for node_id in ids:
        if draw(st.integers(0, 12)) == 0:
            nodes[node_id] = draw(json_values)
            continue
        node_type = draw(st.sampled_from(CHEAP_TYPES))
        names = TYPE_INPUTS.get(node_type, []) if draw(st.booleans()) else INPUT_NAMES
        chosen = draw(st.lists(st.sampled_from(names), max_size=4, unique=True)) if names else []
        inputs = {name: draw(input_values(ids)) for name in chosen}
        spec: dict[str, Any] = {"type": node_type, "inputs": inputs}
        if draw(st.integers(0, 15)) == 0:
            spec[draw(st.text(max_size=4))] = draw(json_values)
        nodes[node_id] = spec
    params = draw(st.dictionaries(st.sampled_from(["p", "q", "n"]),
                                  st.one_of(st.fixed_dictionaries({"type": st.sampled_from(["str", "int", "float",
                                                                                            "bool", "path", "json",
                                                                                            "tensor"])},
                                                                  optional={"default": json_values}),
                                            json_values), max_size=3))
    doc: dict[str, Any] = {"reelgraph": draw(st.sampled_from([1, 1, 1, 1, 2, "1", True, None])), "nodes": nodes,
                           "params": params}
    if draw(st.integers(0, 10)) == 0:
        doc[draw(st.text(max_size=5))] = draw(json_values)
    if draw(st.integers(0, 10)) == 0:
        del doc["nodes"]
    return doc


overrides = st.dictionaries(st.sampled_from(["p", "q", "n", "zz"]), st.one_of(scalars, st.text(max_size=5)),
                            max_size=2)
COUNT = {"documents": 0, "valid": 0, "ran": 0}
EXAMPLES = 10_000
PER_EXAMPLE = 5


def check_problems(problems: list[Problem]) -> None:
    for p in problems:
        assert p.code in VALIDATION_CODES, p
        assert isinstance(p.message, str) and p.message
        assert p.node is None or isinstance(p.node, str)
        assert p.input is None or isinstance(p.input, str)
        json.dumps(p.to_dict())


@pytest.fixture(scope="module")
def fuzz_engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    from conftest import TEST_PLUGIN

    return Engine([TEST_PLUGIN], entry_points=False, env=False, memory_bytes=64 * 1024**2)


@settings(max_examples=EXAMPLES // PER_EXAMPLE, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(batch=st.lists(st.tuples(documents(), st.one_of(st.just({}), overrides)), min_size=PER_EXAMPLE,
                      max_size=PER_EXAMPLE))
def test_generated_workflows_end_in_coded_problems(fuzz_engine: Engine, tmp_path_factory: Any,
                                                  batch: list[tuple[Any, dict[str, Any]]]) -> None:
    out = tmp_path_factory.getbasetemp() / "fuzz-out"
    for doc, params in batch:
        COUNT["documents"] += 1
        problems = fuzz_engine.validate(doc, params, out_dir=out)
        check_problems(problems)
        if problems:
            continue
        COUNT["valid"] += 1
        try:
            fuzz_engine.run(doc, params, out_dir=out, max_memory=None)
            COUNT["ran"] += 1
        except (NodeFailed, RunInterrupted) as exc:
            assert exc.code in RUNTIME_CODES, exc


def test_fuzz_count_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    """Runs after the fuzz test (file order): prints and checks how many documents were tried."""
    with capsys.disabled():
        print(f"\nfuzz: {COUNT['documents']} generated workflows, {COUNT['valid']} valid, {COUNT['ran']} ran "
              "to completion, 0 unhandled exceptions")
    assert COUNT["documents"] >= EXAMPLES


@settings(max_examples=300, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(doc=documents())
def test_cli_never_shows_a_traceback(tmp_path_factory: Any, doc: Any) -> None:
    folder = tmp_path_factory.getbasetemp() / "fuzz-cli"
    folder.mkdir(exist_ok=True)
    path = folder / "wf.json"
    path.write_text(json.dumps(doc, allow_nan=True))
    for argv in (["validate", str(path), "--json"], ["run", str(path), "--quiet", "--out", str(folder / "out")],
                 ["graph", str(path)]):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli_main(argv)
        assert code in (0, 1, 3), (argv, code, err.getvalue())
        assert "Traceback" not in out.getvalue() + err.getvalue()
        if argv[0] == "validate" and code == 1:
            for item in json.loads(out.getvalue()):
                assert item["code"] in VALIDATION_CODES


def test_ten_thousand_node_graphs(fuzz_engine: Engine, tmp_path: Path) -> None:
    n = 10_000
    chain = {f"n{i}": {"type": "t.add", "inputs": {"a": {"from": f"n{i - 1}.result"} if i else 1, "b": 1}}
             for i in range(n)}
    doc = {"reelgraph": 1, "nodes": chain}
    assert fuzz_engine.validate(doc) == []
    assert fuzz_engine.run(doc, outputs=[f"n{n - 1}"]).outputs == {f"n{n - 1}.result": n + 1}
    chain["n0"]["inputs"]["a"] = {"from": f"n{n - 1}.result"}  # one long cycle through all of them
    problems = fuzz_engine.validate(doc)
    assert [(p.code, p.node, p.input) for p in problems] == [("cycle", "n0", "a")]
    assert problems[0].message.count("->") == n


def test_deep_nesting_and_odd_numbers(fuzz_engine: Engine) -> None:
    deep: Any = 1
    for _ in range(500):
        deep = [deep]
    doc = {"reelgraph": 1, "nodes": {"a": {"type": "t.add", "inputs": {"a": deep, "b": math.inf}},
                                     "é✓": {"type": "t.scale", "inputs": {"x": math.nan, "factor": 1e308}}}}
    assert [(p.code, p.node, p.input) for p in fuzz_engine.validate(doc)] == [
        ("invalid_value", "a", "a"), ("invalid_value", "a", "b"), ("invalid_value", "é✓", "x"),
        ("invalid_value", "é✓", "factor")]
